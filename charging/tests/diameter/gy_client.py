"""A Gy client built on an independent Diameter stack (PyPI python-diameter),
driven by charging/tests/diameter.rs against a running Reckon.

Usage: gy_client.py PORT

It connects as pgw.test.example (realm test.example) to ocs.reckon.test
(realm reckon.test) on 127.0.0.1:PORT and runs the scenario below. Each
answer is printed as one JSON line on stdout: {"step": ..., ...}. When it
prints {"step": "waiting"} it reads one line from stdin (the test tops the
starved account up meanwhile), then waits for the server's RAR.
"""
import json
import logging
import sys
import threading

from diameter.message.constants import *
from diameter.message.commands import CreditControlRequest, ReAuthAnswer
from diameter.message.avp.grouped import (
    MultipleServicesCreditControl, RequestedServiceUnit, UsedServiceUnit,
    SubscriptionId)
from diameter.node import Node
from diameter.node.application import SimpleThreadingApplication

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

PORT = int(sys.argv[1])
HOST = "pgw.test.example"
REALM = "test.example"
SERVER = "ocs.reckon.test"
SERVER_REALM = "reckon.test"

rars = []
rar_seen = threading.Event()


def on_request(app, message):
    # The server's RAR (or ASR): answer it as a gateway would.
    rars.append({"command": message.header.command_code,
                 "session_id": message.session_id})
    answer = app.generate_answer(message, result_code=E_RESULT_CODE_DIAMETER_SUCCESS)
    rar_seen.set()
    return answer


node = Node(HOST, REALM, vendor_ids=[VENDOR_TGPP])
node.idle_timeout = 300
peer = node.add_peer(f"aaa://{SERVER}:{PORT};transport=tcp", SERVER_REALM,
                     ip_addresses=["127.0.0.1"], is_persistent=True,
                     is_default=True)
app = SimpleThreadingApplication(APP_DIAMETER_CREDIT_CONTROL_APPLICATION,
                                 is_auth_application=True,
                                 request_handler=on_request)
# Requests from the server carry Destination-Realm = our realm: route them
# to the application too.
node.add_application(app, [peer], realms=[REALM])
node.start()
app.wait_for_ready(timeout=15)


def out(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def ccr(session, kind, number, msisdn="491700000001", mscc=None, action=None):
    m = CreditControlRequest()
    m.header.application_id = 4
    m.session_id = session
    m.origin_host = HOST.encode()
    m.origin_realm = REALM.encode()
    m.destination_realm = SERVER_REALM.encode()
    m.auth_application_id = 4
    m.service_context_id = "32251@3gpp.org"
    m.cc_request_type = kind
    m.cc_request_number = number
    if msisdn is not None:
        m.subscription_id = [SubscriptionId(
            subscription_id_type=E_SUBSCRIPTION_ID_TYPE_END_USER_E164,
            subscription_id_data=msisdn)]
    if action is not None:
        m.requested_action = action
    if mscc is not None:
        m.multiple_services_credit_control = mscc
    return m


def summary(a):
    s = {"result_code": a.result_code,
         "request_number": a.cc_request_number,
         "request_type": a.cc_request_type,
         "e_bit": a.header.is_error,
         "hop_by_hop": a.header.hop_by_hop_identifier,
         "end_to_end": a.header.end_to_end_identifier}
    msccs = []
    for m in a.multiple_services_credit_control or []:
        g = m.granted_service_unit
        msccs.append({
            "rating_group": m.rating_group,
            "result_code": m.result_code,
            "validity_time": m.validity_time,
            "granted_time": g.cc_time if g else None,
            "final_unit_action": (m.final_unit_indication.final_unit_action
                                  if m.final_unit_indication else None)})
    s["mscc"] = msccs
    if getattr(a, "check_balance_result", None) is not None:
        s["check_balance_result"] = a.check_balance_result
    ci = getattr(a, "cost_information", None)
    if ci is not None:
        s["cost"] = {"value_digits": ci.unit_value.value_digits,
                     "exponent": ci.unit_value.exponent or 0,
                     "currency_code": ci.currency_code,
                     "cost_unit": ci.cost_unit}
    return s


def send(step, m):
    a = app.send_request(m, timeout=10)
    out(step, **summary(a))
    return a


S1 = f"{HOST};1;1"
send("initial", ccr(S1, E_CC_REQUEST_TYPE_INITIAL_REQUEST, 0, mscc=[
    MultipleServicesCreditControl(
        requested_service_unit=RequestedServiceUnit(cc_time=60),
        rating_group=10)]))
send("update", ccr(S1, E_CC_REQUEST_TYPE_UPDATE_REQUEST, 1, mscc=[
    MultipleServicesCreditControl(
        requested_service_unit=RequestedServiceUnit(cc_time=60),
        used_service_unit=[UsedServiceUnit(cc_time=30)],
        rating_group=10)]))
terminate = ccr(S1, E_CC_REQUEST_TYPE_TERMINATION_REQUEST, 2, mscc=[
    MultipleServicesCreditControl(
        used_service_unit=[UsedServiceUnit(cc_time=45)], rating_group=10)])
terminate.termination_cause = E_TERMINATION_CAUSE_DIAMETER_LOGOUT
send("terminate", terminate)

# A one-shot event, then the same request again with the T flag (as after
# a failover): the same answer, charged once.
event = ccr(f"{HOST};1;2", E_CC_REQUEST_TYPE_EVENT_REQUEST, 0,
            action=E_REQUESTED_ACTION_DIRECT_DEBITING, mscc=[
                MultipleServicesCreditControl(
                    requested_service_unit=RequestedServiceUnit(cc_time=10),
                    rating_group=20)])
first = send("event", event)
event.header.is_retransmit = True
again = send("event_retransmitted", event)

# The CCR-T again with a new End-to-End-Id and no T flag: the engine's
# (Session-Id, CC-Request-Number) detection answers it, charged once.
terminate.header.end_to_end_identifier = 0
terminate.header.hop_by_hop_identifier = 0
send("terminate_again", terminate)

send("check_balance", ccr(f"{HOST};1;3", E_CC_REQUEST_TYPE_EVENT_REQUEST, 0,
                          action=E_REQUESTED_ACTION_CHECK_BALANCE, mscc=[
                              MultipleServicesCreditControl(rating_group=20)]))
send("price", ccr(f"{HOST};1;4", E_CC_REQUEST_TYPE_EVENT_REQUEST, 0,
                  action=E_REQUESTED_ACTION_PRICE_ENQUIRY, mscc=[
                      MultipleServicesCreditControl(
                          requested_service_unit=RequestedServiceUnit(cc_time=25),
                          rating_group=20)]))
send("unknown_subscriber", ccr(f"{HOST};1;5", E_CC_REQUEST_TYPE_INITIAL_REQUEST, 0,
                               msisdn="33600000000", mscc=[
                                   MultipleServicesCreditControl(
                                       requested_service_unit=RequestedServiceUnit(cc_time=60),
                                       rating_group=10)]))

# A session that runs out of credit (5 seconds left), then a top-up: the
# server sends RAR, the gateway answers and re-authorises with a CCR-U.
S6 = f"{HOST};1;6"
send("starved_initial", ccr(S6, E_CC_REQUEST_TYPE_INITIAL_REQUEST, 0,
                            msisdn="491700000002", mscc=[
                                MultipleServicesCreditControl(
                                    requested_service_unit=RequestedServiceUnit(cc_time=60),
                                    rating_group=10)]))
out("waiting")
sys.stdin.readline()
got = rar_seen.wait(timeout=10)
out("rar", received=got, requests=rars)
send("reauthorised", ccr(S6, E_CC_REQUEST_TYPE_UPDATE_REQUEST, 1,
                         msisdn="491700000002", mscc=[
                             MultipleServicesCreditControl(
                                 requested_service_unit=RequestedServiceUnit(cc_time=60),
                                 used_service_unit=[UsedServiceUnit(cc_time=5)],
                                 rating_group=10)]))
send("starved_terminate", ccr(S6, E_CC_REQUEST_TYPE_TERMINATION_REQUEST, 2,
                              msisdn="491700000002", mscc=[
                                  MultipleServicesCreditControl(
                                      used_service_unit=[UsedServiceUnit(cc_time=20)],
                                      rating_group=10)]))

# DPR/DPA, then the socket closes.
node.stop(wait_timeout=10)
out("stopped", connections=len(node.connections))
