//! The AVPs Reckon knows: the base protocol (RFC 6733), Diameter
//! Credit-Control (RFC 4006 / RFC 8506) and the 3GPP Ro/Gy AVPs of
//! TS 32.299 an online charging server meets, with their types and the M
//! flag they are sent with. Enumerated values used by the server follow.

use super::avp::{AVP_FLAG_MANDATORY, AVP_FLAG_VENDOR};

/// The 3GPP vendor id.
pub const VENDOR_3GPP: u32 = 10415;

/// An AVP's data type (RFC 6733 4.2, 4.3).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AvpType {
    /// Arbitrary bytes.
    OctetString,
    /// Signed 32-bit.
    Integer32,
    /// Signed 64-bit.
    Integer64,
    /// Unsigned 32-bit.
    Unsigned32,
    /// Unsigned 64-bit.
    Unsigned64,
    /// Other AVPs.
    Grouped,
    /// An IP address with its family.
    Address,
    /// Seconds since 1900 (NTP), 32-bit.
    Time,
    /// UTF-8 text.
    Utf8String,
    /// A host or realm name.
    DiameterIdentity,
    /// A Diameter URI.
    DiameterUri,
    /// An Integer32 with named values.
    Enumerated,
    /// An IP filter rule (text).
    IpFilterRule,
}

/// One AVP definition.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AvpDef {
    /// AVP code.
    pub code: u32,
    /// Vendor id (0: IETF).
    pub vendor: u32,
    /// The AVP's name.
    pub name: &'static str,
    /// Its data type.
    pub kind: AvpType,
    /// Whether it is sent with the M flag.
    pub mandatory: bool,
}

impl AvpDef {
    /// Flags to send it with.
    pub const fn flags(&self) -> u8 {
        (if self.vendor != 0 { AVP_FLAG_VENDOR } else { 0 })
            | (if self.mandatory {
                AVP_FLAG_MANDATORY
            } else {
                0
            })
    }
}

macro_rules! dictionary {
    ($( $(#[$m:meta])* $konst:ident = ($code:literal, $vendor:tt, $kind:ident, $mand:expr, $name:expr); )*) => {
        $(
            $(#[$m])*
            pub const $konst: AvpDef = AvpDef {
                code: $code,
                vendor: $vendor,
                name: $name,
                kind: AvpType::$kind,
                mandatory: $mand,
            };
        )*
        /// Every AVP of the dictionary.
        pub static ALL: &[AvpDef] = &[$($konst),*];

        /// The definition of (code, vendor), if known.
        pub fn lookup(code: u32, vendor: u32) -> Option<&'static AvpDef> {
            // A match on constants: the compiler builds a search, not a scan.
            match (code, vendor) {
                $( ($code, $vendor) => Some(&$konst), )*
                _ => None,
            }
        }
    };
}

const M: bool = true;
const NO_M: bool = false;
const G: u32 = VENDOR_3GPP;

dictionary! {
    // RFC 6733 base protocol (and RADIUS-derived ones in common use).
    /// User-Name.
    USER_NAME = (1, 0, Utf8String, M, "User-Name");
    /// Class.
    CLASS = (25, 0, OctetString, M, "Class");
    /// Session-Timeout.
    SESSION_TIMEOUT = (27, 0, Unsigned32, M, "Session-Timeout");
    /// Called-Station-Id (the APN in Gy).
    CALLED_STATION_ID = (30, 0, Utf8String, M, "Called-Station-Id");
    /// Proxy-State.
    PROXY_STATE = (33, 0, OctetString, M, "Proxy-State");
    /// Acct-Multi-Session-Id.
    ACCT_MULTI_SESSION_ID = (50, 0, Utf8String, M, "Acct-Multi-Session-Id");
    /// Event-Timestamp.
    EVENT_TIMESTAMP = (55, 0, Time, M, "Event-Timestamp");
    /// Host-IP-Address.
    HOST_IP_ADDRESS = (257, 0, Address, M, "Host-IP-Address");
    /// Auth-Application-Id.
    AUTH_APPLICATION_ID = (258, 0, Unsigned32, M, "Auth-Application-Id");
    /// Acct-Application-Id.
    ACCT_APPLICATION_ID = (259, 0, Unsigned32, M, "Acct-Application-Id");
    /// Vendor-Specific-Application-Id.
    VENDOR_SPECIFIC_APPLICATION_ID = (260, 0, Grouped, M, "Vendor-Specific-Application-Id");
    /// Redirect-Host-Usage.
    REDIRECT_HOST_USAGE = (261, 0, Enumerated, M, "Redirect-Host-Usage");
    /// Redirect-Max-Cache-Time.
    REDIRECT_MAX_CACHE_TIME = (262, 0, Unsigned32, M, "Redirect-Max-Cache-Time");
    /// Session-Id.
    SESSION_ID = (263, 0, Utf8String, M, "Session-Id");
    /// Origin-Host.
    ORIGIN_HOST = (264, 0, DiameterIdentity, M, "Origin-Host");
    /// Supported-Vendor-Id.
    SUPPORTED_VENDOR_ID = (265, 0, Unsigned32, M, "Supported-Vendor-Id");
    /// Vendor-Id.
    VENDOR_ID = (266, 0, Unsigned32, M, "Vendor-Id");
    /// Firmware-Revision.
    FIRMWARE_REVISION = (267, 0, Unsigned32, NO_M, "Firmware-Revision");
    /// Result-Code.
    RESULT_CODE = (268, 0, Unsigned32, M, "Result-Code");
    /// Product-Name.
    PRODUCT_NAME = (269, 0, Utf8String, NO_M, "Product-Name");
    /// Session-Binding.
    SESSION_BINDING = (270, 0, Unsigned32, M, "Session-Binding");
    /// Session-Server-Failover.
    SESSION_SERVER_FAILOVER = (271, 0, Enumerated, M, "Session-Server-Failover");
    /// Multi-Round-Time-Out.
    MULTI_ROUND_TIME_OUT = (272, 0, Unsigned32, M, "Multi-Round-Time-Out");
    /// Disconnect-Cause.
    DISCONNECT_CAUSE = (273, 0, Enumerated, M, "Disconnect-Cause");
    /// Auth-Request-Type.
    AUTH_REQUEST_TYPE = (274, 0, Enumerated, M, "Auth-Request-Type");
    /// Auth-Grace-Period.
    AUTH_GRACE_PERIOD = (276, 0, Unsigned32, M, "Auth-Grace-Period");
    /// Auth-Session-State.
    AUTH_SESSION_STATE = (277, 0, Enumerated, M, "Auth-Session-State");
    /// Origin-State-Id.
    ORIGIN_STATE_ID = (278, 0, Unsigned32, M, "Origin-State-Id");
    /// Failed-AVP.
    FAILED_AVP = (279, 0, Grouped, M, "Failed-AVP");
    /// Proxy-Host.
    PROXY_HOST = (280, 0, DiameterIdentity, M, "Proxy-Host");
    /// Error-Message.
    ERROR_MESSAGE = (281, 0, Utf8String, NO_M, "Error-Message");
    /// Route-Record.
    ROUTE_RECORD = (282, 0, DiameterIdentity, M, "Route-Record");
    /// Destination-Realm.
    DESTINATION_REALM = (283, 0, DiameterIdentity, M, "Destination-Realm");
    /// Proxy-Info.
    PROXY_INFO = (284, 0, Grouped, M, "Proxy-Info");
    /// Re-Auth-Request-Type.
    RE_AUTH_REQUEST_TYPE = (285, 0, Enumerated, M, "Re-Auth-Request-Type");
    /// Accounting-Sub-Session-Id.
    ACCOUNTING_SUB_SESSION_ID = (287, 0, Unsigned64, M, "Accounting-Sub-Session-Id");
    /// Authorization-Lifetime.
    AUTHORIZATION_LIFETIME = (291, 0, Unsigned32, M, "Authorization-Lifetime");
    /// Redirect-Host.
    REDIRECT_HOST = (292, 0, DiameterUri, M, "Redirect-Host");
    /// Destination-Host.
    DESTINATION_HOST = (293, 0, DiameterIdentity, M, "Destination-Host");
    /// Error-Reporting-Host.
    ERROR_REPORTING_HOST = (294, 0, DiameterIdentity, NO_M, "Error-Reporting-Host");
    /// Termination-Cause.
    TERMINATION_CAUSE = (295, 0, Enumerated, M, "Termination-Cause");
    /// Origin-Realm.
    ORIGIN_REALM = (296, 0, DiameterIdentity, M, "Origin-Realm");
    /// Experimental-Result.
    EXPERIMENTAL_RESULT = (297, 0, Grouped, M, "Experimental-Result");
    /// Experimental-Result-Code.
    EXPERIMENTAL_RESULT_CODE = (298, 0, Unsigned32, M, "Experimental-Result-Code");
    /// Inband-Security-Id.
    INBAND_SECURITY_ID = (299, 0, Unsigned32, M, "Inband-Security-Id");

    // RFC 4006 / RFC 8506 Diameter Credit-Control.
    /// CC-Correlation-Id.
    CC_CORRELATION_ID = (411, 0, OctetString, NO_M, "CC-Correlation-Id");
    /// CC-Input-Octets.
    CC_INPUT_OCTETS = (412, 0, Unsigned64, M, "CC-Input-Octets");
    /// CC-Money.
    CC_MONEY = (413, 0, Grouped, M, "CC-Money");
    /// CC-Output-Octets.
    CC_OUTPUT_OCTETS = (414, 0, Unsigned64, M, "CC-Output-Octets");
    /// CC-Request-Number.
    CC_REQUEST_NUMBER = (415, 0, Unsigned32, M, "CC-Request-Number");
    /// CC-Request-Type.
    CC_REQUEST_TYPE = (416, 0, Enumerated, M, "CC-Request-Type");
    /// CC-Service-Specific-Units.
    CC_SERVICE_SPECIFIC_UNITS = (417, 0, Unsigned64, M, "CC-Service-Specific-Units");
    /// CC-Session-Failover.
    CC_SESSION_FAILOVER = (418, 0, Enumerated, M, "CC-Session-Failover");
    /// CC-Sub-Session-Id.
    CC_SUB_SESSION_ID = (419, 0, Unsigned64, M, "CC-Sub-Session-Id");
    /// CC-Time.
    CC_TIME = (420, 0, Unsigned32, M, "CC-Time");
    /// CC-Total-Octets.
    CC_TOTAL_OCTETS = (421, 0, Unsigned64, M, "CC-Total-Octets");
    /// Check-Balance-Result.
    CHECK_BALANCE_RESULT = (422, 0, Enumerated, M, "Check-Balance-Result");
    /// Cost-Information.
    COST_INFORMATION = (423, 0, Grouped, M, "Cost-Information");
    /// Cost-Unit.
    COST_UNIT = (424, 0, Utf8String, M, "Cost-Unit");
    /// Currency-Code (ISO 4217 numeric).
    CURRENCY_CODE = (425, 0, Unsigned32, M, "Currency-Code");
    /// Credit-Control.
    CREDIT_CONTROL = (426, 0, Enumerated, M, "Credit-Control");
    /// Credit-Control-Failure-Handling.
    CREDIT_CONTROL_FAILURE_HANDLING = (427, 0, Enumerated, M, "Credit-Control-Failure-Handling");
    /// Direct-Debiting-Failure-Handling.
    DIRECT_DEBITING_FAILURE_HANDLING = (428, 0, Enumerated, M, "Direct-Debiting-Failure-Handling");
    /// Exponent.
    EXPONENT = (429, 0, Integer32, M, "Exponent");
    /// Final-Unit-Indication.
    FINAL_UNIT_INDICATION = (430, 0, Grouped, M, "Final-Unit-Indication");
    /// Granted-Service-Unit.
    GRANTED_SERVICE_UNIT = (431, 0, Grouped, M, "Granted-Service-Unit");
    /// Rating-Group.
    RATING_GROUP = (432, 0, Unsigned32, M, "Rating-Group");
    /// Redirect-Address-Type.
    REDIRECT_ADDRESS_TYPE = (433, 0, Enumerated, M, "Redirect-Address-Type");
    /// Redirect-Server.
    REDIRECT_SERVER = (434, 0, Grouped, M, "Redirect-Server");
    /// Redirect-Server-Address.
    REDIRECT_SERVER_ADDRESS = (435, 0, Utf8String, M, "Redirect-Server-Address");
    /// Requested-Action.
    REQUESTED_ACTION = (436, 0, Enumerated, M, "Requested-Action");
    /// Requested-Service-Unit.
    REQUESTED_SERVICE_UNIT = (437, 0, Grouped, M, "Requested-Service-Unit");
    /// Restriction-Filter-Rule.
    RESTRICTION_FILTER_RULE = (438, 0, IpFilterRule, M, "Restriction-Filter-Rule");
    /// Service-Identifier.
    SERVICE_IDENTIFIER = (439, 0, Unsigned32, M, "Service-Identifier");
    /// Service-Parameter-Info.
    SERVICE_PARAMETER_INFO = (440, 0, Grouped, NO_M, "Service-Parameter-Info");
    /// Service-Parameter-Type.
    SERVICE_PARAMETER_TYPE = (441, 0, Unsigned32, NO_M, "Service-Parameter-Type");
    /// Service-Parameter-Value.
    SERVICE_PARAMETER_VALUE = (442, 0, OctetString, NO_M, "Service-Parameter-Value");
    /// Subscription-Id.
    SUBSCRIPTION_ID = (443, 0, Grouped, M, "Subscription-Id");
    /// Subscription-Id-Data.
    SUBSCRIPTION_ID_DATA = (444, 0, Utf8String, M, "Subscription-Id-Data");
    /// Unit-Value.
    UNIT_VALUE = (445, 0, Grouped, M, "Unit-Value");
    /// Used-Service-Unit.
    USED_SERVICE_UNIT = (446, 0, Grouped, M, "Used-Service-Unit");
    /// Value-Digits.
    VALUE_DIGITS = (447, 0, Integer64, M, "Value-Digits");
    /// Validity-Time.
    VALIDITY_TIME = (448, 0, Unsigned32, M, "Validity-Time");
    /// Final-Unit-Action.
    FINAL_UNIT_ACTION = (449, 0, Enumerated, M, "Final-Unit-Action");
    /// Subscription-Id-Type.
    SUBSCRIPTION_ID_TYPE = (450, 0, Enumerated, M, "Subscription-Id-Type");
    /// Tariff-Time-Change.
    TARIFF_TIME_CHANGE = (451, 0, Time, M, "Tariff-Time-Change");
    /// Tariff-Change-Usage.
    TARIFF_CHANGE_USAGE = (452, 0, Enumerated, M, "Tariff-Change-Usage");
    /// G-S-U-Pool-Identifier.
    GSU_POOL_IDENTIFIER = (453, 0, Unsigned32, M, "G-S-U-Pool-Identifier");
    /// CC-Unit-Type.
    CC_UNIT_TYPE = (454, 0, Enumerated, M, "CC-Unit-Type");
    /// Multiple-Services-Indicator.
    MULTIPLE_SERVICES_INDICATOR = (455, 0, Enumerated, M, "Multiple-Services-Indicator");
    /// Multiple-Services-Credit-Control.
    MULTIPLE_SERVICES_CREDIT_CONTROL = (456, 0, Grouped, M, "Multiple-Services-Credit-Control");
    /// G-S-U-Pool-Reference.
    GSU_POOL_REFERENCE = (457, 0, Grouped, M, "G-S-U-Pool-Reference");
    /// User-Equipment-Info.
    USER_EQUIPMENT_INFO = (458, 0, Grouped, NO_M, "User-Equipment-Info");
    /// User-Equipment-Info-Type.
    USER_EQUIPMENT_INFO_TYPE = (459, 0, Enumerated, NO_M, "User-Equipment-Info-Type");
    /// User-Equipment-Info-Value.
    USER_EQUIPMENT_INFO_VALUE = (460, 0, OctetString, NO_M, "User-Equipment-Info-Value");
    /// Service-Context-Id.
    SERVICE_CONTEXT_ID = (461, 0, Utf8String, M, "Service-Context-Id");
    /// Filter-Id (RADIUS-derived, in Final-Unit-Indication).
    FILTER_ID = (11, 0, Utf8String, M, "Filter-Id");

    // 3GPP TS 32.299 (Ro/Gy) and TS 29.061 AVPs an OCS meets.
    /// 3GPP-Charging-Id.
    TGPP_CHARGING_ID = (2, G, OctetString, NO_M, "3GPP-Charging-Id");
    /// 3GPP-PDP-Type.
    TGPP_PDP_TYPE = (3, G, Enumerated, NO_M, "3GPP-PDP-Type");
    /// 3GPP-IMSI-MCC-MNC.
    TGPP_IMSI_MCC_MNC = (8, G, Utf8String, NO_M, "3GPP-IMSI-MCC-MNC");
    /// 3GPP-GGSN-MCC-MNC.
    TGPP_GGSN_MCC_MNC = (9, G, Utf8String, NO_M, "3GPP-GGSN-MCC-MNC");
    /// 3GPP-Selection-Mode.
    TGPP_SELECTION_MODE = (12, G, Utf8String, NO_M, "3GPP-Selection-Mode");
    /// 3GPP-Charging-Characteristics.
    TGPP_CHARGING_CHARACTERISTICS = (13, G, Utf8String, NO_M, "3GPP-Charging-Characteristics");
    /// 3GPP-SGSN-MCC-MNC.
    TGPP_SGSN_MCC_MNC = (18, G, Utf8String, NO_M, "3GPP-SGSN-MCC-MNC");
    /// 3GPP-RAT-Type.
    TGPP_RAT_TYPE = (21, G, OctetString, NO_M, "3GPP-RAT-Type");
    /// 3GPP-User-Location-Info.
    TGPP_USER_LOCATION_INFO = (22, G, OctetString, NO_M, "3GPP-User-Location-Info");
    /// 3GPP-MS-TimeZone.
    TGPP_MS_TIMEZONE = (23, G, OctetString, NO_M, "3GPP-MS-TimeZone");
    /// Time-Quota-Threshold.
    TIME_QUOTA_THRESHOLD = (868, G, Unsigned32, M, "Time-Quota-Threshold");
    /// Volume-Quota-Threshold.
    VOLUME_QUOTA_THRESHOLD = (869, G, Unsigned32, M, "Volume-Quota-Threshold");
    /// Trigger-Type.
    TRIGGER_TYPE = (870, G, Enumerated, M, "Trigger-Type");
    /// Quota-Holding-Time.
    QUOTA_HOLDING_TIME = (871, G, Unsigned32, M, "Quota-Holding-Time");
    /// Reporting-Reason.
    REPORTING_REASON = (872, G, Enumerated, M, "Reporting-Reason");
    /// Service-Information.
    SERVICE_INFORMATION = (873, G, Grouped, M, "Service-Information");
    /// PS-Information.
    PS_INFORMATION = (874, G, Grouped, M, "PS-Information");
    /// IMS-Information.
    IMS_INFORMATION = (876, G, Grouped, M, "IMS-Information");
    /// Quota-Consumption-Time.
    QUOTA_CONSUMPTION_TIME = (881, G, Unsigned32, M, "Quota-Consumption-Time");
    /// Unit-Quota-Threshold.
    UNIT_QUOTA_THRESHOLD = (1226, G, Unsigned32, M, "Unit-Quota-Threshold");
    /// SGSN-Address.
    SGSN_ADDRESS = (1228, G, Address, M, "SGSN-Address");
    /// GGSN-Address.
    GGSN_ADDRESS = (847, G, Address, M, "GGSN-Address");
    /// Trigger.
    TRIGGER = (1264, G, Grouped, M, "Trigger");
    /// RAT-Type (TS 29.212).
    RAT_TYPE = (1032, G, Enumerated, NO_M, "RAT-Type");
    /// Node-Functionality.
    NODE_FUNCTIONALITY = (862, G, Enumerated, M, "Node-Functionality");
    /// Role-Of-Node.
    ROLE_OF_NODE = (829, G, Enumerated, M, "Role-Of-Node");
    /// SMS-Information.
    SMS_INFORMATION = (2000, G, Grouped, M, "SMS-Information");
    /// PS-Furnish-Charging-Information.
    PS_FURNISH_CHARGING_INFORMATION = (865, G, Grouped, M, "PS-Furnish-Charging-Information");
    /// QoS-Information (TS 29.212).
    QOS_INFORMATION = (1016, G, Grouped, M, "QoS-Information");
    /// Service-Specific-Info.
    SERVICE_SPECIFIC_INFO = (1249, G, Grouped, M, "Service-Specific-Info");
    /// Event-Charging-TimeStamp.
    EVENT_CHARGING_TIMESTAMP = (1258, G, Time, M, "Event-Charging-TimeStamp");
    /// Envelope.
    ENVELOPE = (1266, G, Grouped, M, "Envelope");
    /// Envelope-Reporting.
    ENVELOPE_REPORTING = (1268, G, Enumerated, M, "Envelope-Reporting");
    /// Time-Quota-Mechanism.
    TIME_QUOTA_MECHANISM = (1270, G, Grouped, M, "Time-Quota-Mechanism");
    /// AF-Correlation-Information.
    AF_CORRELATION_INFORMATION = (1276, G, Grouped, M, "AF-Correlation-Information");
    /// AoC-Request-Type.
    AOC_REQUEST_TYPE = (2055, G, Enumerated, M, "AoC-Request-Type");
    /// Refund-Information.
    REFUND_INFORMATION = (2022, G, OctetString, M, "Refund-Information");
    /// Announcement-Information.
    ANNOUNCEMENT_INFORMATION = (3904, G, Grouped, M, "Announcement-Information");
    /// Related-Trigger.
    RELATED_TRIGGER = (3926, G, Grouped, M, "Related-Trigger");
    /// Low-Balance-Indication.
    LOW_BALANCE_INDICATION = (2020, G, Enumerated, M, "Low-Balance-Indication");
    /// Remaining-Balance.
    REMAINING_BALANCE = (2021, G, Grouped, M, "Remaining-Balance");
}

/// Flags an AVP is sent with: the dictionary's, else V as the vendor says
/// and M set.
pub fn default_flags(code: u32, vendor: u32) -> u8 {
    match lookup(code, vendor) {
        Some(d) => d.flags(),
        None => (if vendor != 0 { AVP_FLAG_VENDOR } else { 0 }) | AVP_FLAG_MANDATORY,
    }
}

/// CC-Request-Type values.
pub mod cc_request_type {
    /// INITIAL_REQUEST.
    pub const INITIAL: u32 = 1;
    /// UPDATE_REQUEST.
    pub const UPDATE: u32 = 2;
    /// TERMINATION_REQUEST.
    pub const TERMINATION: u32 = 3;
    /// EVENT_REQUEST.
    pub const EVENT: u32 = 4;
}

/// Requested-Action values.
pub mod requested_action {
    /// DIRECT_DEBITING.
    pub const DIRECT_DEBITING: u32 = 0;
    /// REFUND_ACCOUNT.
    pub const REFUND_ACCOUNT: u32 = 1;
    /// CHECK_BALANCE.
    pub const CHECK_BALANCE: u32 = 2;
    /// PRICE_ENQUIRY.
    pub const PRICE_ENQUIRY: u32 = 3;
}

/// Subscription-Id-Type values.
pub mod subscription_id_type {
    /// END_USER_E164 (an MSISDN).
    pub const E164: u32 = 0;
    /// END_USER_IMSI.
    pub const IMSI: u32 = 1;
    /// END_USER_SIP_URI.
    pub const SIP_URI: u32 = 2;
    /// END_USER_NAI.
    pub const NAI: u32 = 3;
    /// END_USER_PRIVATE.
    pub const PRIVATE: u32 = 4;
}

/// Final-Unit-Action values.
pub mod final_unit_action {
    /// TERMINATE.
    pub const TERMINATE: u32 = 0;
    /// REDIRECT.
    pub const REDIRECT: u32 = 1;
    /// RESTRICT_ACCESS.
    pub const RESTRICT_ACCESS: u32 = 2;
}

/// Check-Balance-Result values.
pub mod check_balance_result {
    /// ENOUGH_CREDIT.
    pub const ENOUGH_CREDIT: u32 = 0;
    /// NO_CREDIT.
    pub const NO_CREDIT: u32 = 1;
}

/// Redirect-Address-Type values.
pub mod redirect_address_type {
    /// IPv4 address.
    pub const IPV4: u32 = 0;
    /// IPv6 address.
    pub const IPV6: u32 = 1;
    /// URL.
    pub const URL: u32 = 2;
    /// SIP URI.
    pub const SIP_URI: u32 = 3;
}

/// Disconnect-Cause values.
pub mod disconnect_cause {
    /// REBOOTING.
    pub const REBOOTING: u32 = 0;
    /// BUSY.
    pub const BUSY: u32 = 1;
    /// DO_NOT_WANT_TO_TALK_TO_YOU.
    pub const DO_NOT_WANT_TO_TALK_TO_YOU: u32 = 2;
}

/// Re-Auth-Request-Type values.
pub mod re_auth_request_type {
    /// AUTHORIZE_ONLY.
    pub const AUTHORIZE_ONLY: u32 = 0;
    /// AUTHORIZE_AUTHENTICATE.
    pub const AUTHORIZE_AUTHENTICATE: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_flags_follow_the_vendor() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(
                !ALL[..i]
                    .iter()
                    .any(|b| b.code == a.code && b.vendor == a.vendor),
                "{} defined twice",
                a.name
            );
            assert_eq!(
                a.flags() & AVP_FLAG_VENDOR != 0,
                a.vendor != 0,
                "{}",
                a.name
            );
        }
        assert_eq!(lookup(263, 0), Some(&SESSION_ID));
        assert_eq!(lookup(872, VENDOR_3GPP), Some(&REPORTING_REASON));
        assert_eq!(lookup(872, 0), None);
    }
}
