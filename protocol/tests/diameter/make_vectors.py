"""Writes the byte vectors of protocol/tests/diameter_vectors.rs with an
independent Diameter stack (PyPI python-diameter 0.9.0), shaped like what a
3GPP PGW and an OCS exchange on Gy. Run: python3 make_vectors.py"""
import datetime
from diameter.message.commands import (
    CapabilitiesExchangeRequest, CreditControlRequest, CreditControlAnswer)
from diameter.message.avp.grouped import (
    MultipleServicesCreditControl, RequestedServiceUnit, UsedServiceUnit,
    GrantedServiceUnit, SubscriptionId, ServiceInformation, PsInformation,
    FinalUnitIndication, VendorSpecificApplicationId, UserEquipmentInfo)
from diameter.message.constants import *


def show(name, msg):
    # RFC 6733 sends Origin-Host and Origin-Realm with the M flag; this
    # stack leaves it clear on some commands. Set it as real peers do.
    b = bytearray(msg.as_bytes())
    i = 20
    while i < len(b):
        code = int.from_bytes(b[i:i + 4], "big")
        length = int.from_bytes(b[i + 5:i + 8], "big")
        if code in (AVP_ORIGIN_HOST, AVP_ORIGIN_REALM):
            b[i + 4] |= 0x40
        i += (length + 3) // 4 * 4
    b = bytes(b)
    print(f"// {name}: {len(b)} bytes")
    print(f'const {name}: &str = "{b.hex()}";')


cer = CapabilitiesExchangeRequest()
cer.header.hop_by_hop_identifier = 0x11223344
cer.header.end_to_end_identifier = 0x55667788
cer.origin_host = b"pgw1.epc.mnc001.mcc001.3gppnetwork.org"
cer.origin_realm = b"epc.mnc001.mcc001.3gppnetwork.org"
cer.host_ip_address = ["10.1.2.3"]
cer.vendor_id = 10415
cer.product_name = "PGW"
cer.origin_state_id = 1700000000
cer.supported_vendor_id = [10415]
cer.auth_application_id = [4]
cer.vendor_specific_application_id = [
    VendorSpecificApplicationId(vendor_id=10415, auth_application_id=4)]
cer.firmware_revision = 1
show("CER", cer)

ccr = CreditControlRequest()
ccr.header.hop_by_hop_identifier = 0x00000101
ccr.header.end_to_end_identifier = 0xabc00001
ccr.header.application_id = 4
ccr.session_id = "pgw1.epc.mnc001.mcc001.3gppnetwork.org;1700000000;42;dedicated"
ccr.origin_host = b"pgw1.epc.mnc001.mcc001.3gppnetwork.org"
ccr.origin_realm = b"epc.mnc001.mcc001.3gppnetwork.org"
ccr.destination_realm = b"ocs.example.net"
ccr.auth_application_id = 4
ccr.service_context_id = "32251@3gpp.org"
ccr.cc_request_type = E_CC_REQUEST_TYPE_INITIAL_REQUEST
ccr.cc_request_number = 0
ccr.origin_state_id = 1700000000
ccr.event_timestamp = datetime.datetime(2026, 1, 2, 3, 4, 5)
ccr.subscription_id = [
    SubscriptionId(subscription_id_type=E_SUBSCRIPTION_ID_TYPE_END_USER_E164,
                   subscription_id_data="491701234567"),
    SubscriptionId(subscription_id_type=E_SUBSCRIPTION_ID_TYPE_END_USER_IMSI,
                   subscription_id_data="001010123456789")]
ccr.multiple_services_indicator = E_MULTIPLE_SERVICES_INDICATOR_MULTIPLE_SERVICES_SUPPORTED
ccr.multiple_services_credit_control = [
    MultipleServicesCreditControl(
        requested_service_unit=RequestedServiceUnit(cc_total_octets=1000000),
        rating_group=10, service_identifier=[1001]),
    MultipleServicesCreditControl(
        requested_service_unit=RequestedServiceUnit(cc_time=600),
        rating_group=20)]
ccr.user_equipment_info = UserEquipmentInfo(
    user_equipment_info_type=0, user_equipment_info_value=b"3534900698733190")
ccr.service_information = ServiceInformation(ps_information=PsInformation(
    tgpp_charging_id=b"\x00\x00\x10\x01", called_station_id="internet",
    tgpp_rat_type=b"\x06"))
show("CCR_I", ccr)

ccr.header.hop_by_hop_identifier = 0x00000102
ccr.header.end_to_end_identifier = 0xabc00002
ccr.cc_request_type = E_CC_REQUEST_TYPE_UPDATE_REQUEST
ccr.cc_request_number = 1
ccr.subscription_id = [ccr.subscription_id[0]]
ccr.multiple_services_credit_control = [
    MultipleServicesCreditControl(
        requested_service_unit=RequestedServiceUnit(),
        used_service_unit=[UsedServiceUnit(cc_total_octets=734003,
                                           cc_input_octets=34003,
                                           cc_output_octets=700000,
                                           reporting_reason=3)],
        rating_group=10)]
ccr.user_equipment_info = None
ccr.service_information = None
show("CCR_U", ccr)

cca = CreditControlAnswer()
cca.header.hop_by_hop_identifier = 0x00000101
cca.header.end_to_end_identifier = 0xabc00001
cca.header.is_proxyable = True
cca.session_id = "pgw1.epc.mnc001.mcc001.3gppnetwork.org;1700000000;42;dedicated"
cca.result_code = E_RESULT_CODE_DIAMETER_SUCCESS
cca.origin_host = b"ocs.example.net"
cca.origin_realm = b"example.net"
cca.auth_application_id = 4
cca.cc_request_type = E_CC_REQUEST_TYPE_INITIAL_REQUEST
cca.cc_request_number = 0
cca.multiple_services_credit_control = [
    MultipleServicesCreditControl(
        granted_service_unit=GrantedServiceUnit(cc_total_octets=1000000),
        rating_group=10, validity_time=300, result_code=2001),
    MultipleServicesCreditControl(
        granted_service_unit=GrantedServiceUnit(cc_time=120),
        rating_group=20, validity_time=300, result_code=2001,
        final_unit_indication=FinalUnitIndication(final_unit_action=0))]
show("CCA_I", cca)
