"""HL7 v2 order intake on both backends, over a real MLLP connection to the real listener:
what each message type does to the orders, the acknowledgements (codes, texts, ERR), messages
applied once whatever is re-sent (also at the same time), and AR when the database is down."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from pacs.audit.trail import Action
from pacs.index.audit import AuditFilter
from pacs.index.database import open_engine
from pacs.index.hl7_log import Hl7Log, MessageFilter
from pacs.index.hl7_orders import Hl7OrderRepository
from pacs.index.orders import Order, OrderFilter, OrderRepository
from pacs.index.reference import ReferenceRepository
from pacs.services import Services
from tests.support.hl7 import (
    MllpClient,
    appointment,
    message,
    new_order,
    obr,
    orc,
    order_control,
    pid,
    running_hl7_listener,
    seg,
)
from worklist.hl7.intake import Hl7Intake
from worklist.hl7.listener import Hl7Listener
from worklist.hl7.mllp import MllpServer
from worklist.hl7.receiver import Hl7Receiver
from worklist.orders import OrderService
from worklist.reference import ReferenceData


@pytest.fixture
def listener(services: Services) -> Iterator[Hl7Listener]:
    with running_hl7_listener(services) as running:
        yield running


@pytest.fixture
def client(listener: Hl7Listener) -> Iterator[MllpClient]:
    with MllpClient(listener.port) as connected:
        yield connected


def by_placer(services: Services, placer: str) -> Order:
    found = services.orders.search(OrderFilter(placer_order_number=placer))
    assert len(found) == 1, found
    return found[0]


def test_new_order_keeps_every_field_sent(services: Services, client: MllpClient) -> None:
    sent = message(
        "ORM^O01^ORM_O01", "NW-1", pid("PAT-7", name="Doe^Jane^Q^Jr^Dr", birth="19700203", sex="F"),
        seg("PV1", {1: "1", 2: "O", 3: "RAD^CT1"}),
        orc("NW", "PLC-1", "FIL-1", o7="^^^20300506070800+0200^^S", o12="1234^Smith^John^^^Dr"),
        obr("PLC-1", accession="EXT-ACC-1", o13="smoker", o31="R07.4^Chest pain~^cough"),
        seg("NTE", {1: "1", 3: "patient is claustrophobic"}),
    )
    ack = client.exchange(sent)
    assert (ack.code, ack.control_id) == ("AA", "NW-1")
    assert ack.text.startswith("NW: created ORD-")
    # MSH: sender and receiver swapped, the version and trigger event echoed (HL7 v2.5 2.9.2).
    assert [ack.field("MSH", n) for n in (3, 4, 5, 6, 12)] == ["MINIPACS", "RADIOLOGY", "RIS", "HOSP", "2.5.1"]
    assert [ack.field("MSH", 9, c) for c in (1, 2, 3)] == ["ACK", "O01", "ACK"]
    assert ack.field("MSH", 10) and ack.field("MSH", 10) != "NW-1"
    order = by_placer(services, "PLC-1")
    assert (order.patient_id, order.issuer_of_patient_id) == ("PAT-7", "HOSP")
    assert order.patient_name == "Doe^Jane^Q^Dr^Jr"  # DICOM order: family^given^middle^prefix^suffix
    assert (order.patient_birth_date, order.patient_sex) == ("19700203", "F")
    assert (order.ordering_provider, order.priority) == ("Smith^John^^Dr", "STAT")
    assert (order.procedure_code, order.procedure_description, order.modality) == ("CTCHEST", "CT chest", "CT")
    assert (order.accession_number, order.filler_order_number, order.location) == ("EXT-ACC-1", "FIL-1", "RAD CT1")
    assert order.scheduled_at == datetime(2030, 5, 6, 5, 8, tzinfo=UTC)
    assert (order.clinical_history, order.clinical_indication) == ("smoker", "Chest pain; cough")
    assert order.special_instructions == "patient is claustrophobic"
    assert (order.status, order.created_by) == ("ORDERED", "hl7:RIS")
    assert ack.text == f"NW: created {order.order_number} (accession EXT-ACC-1)"
    services.audit.flush()
    events = services.audit.search(AuditFilter(actor="hl7:RIS", patient_id="PAT-7"))
    assert [(e["channel"], e["action"], e["outcome"]) for e in events] == [("hl7", Action.ORDER, "success")]


def test_omi_order_reads_ipc_and_tq1(services: Services, client: MllpClient) -> None:
    sent = message(
        "OMI^O23^OMI_O23", "OMI-1", pid("PAT-8"), orc("NW", "PLC-OMI"),
        seg("TQ1", {1: "1", 7: "20300102093000", 9: "A"}), obr("PLC-OMI", modality="", accession="ignored"),
        seg("IPC", {1: "IPC-ACC-1", 2: "RP1", 3: "1.2.3", 4: "SPS1", 5: "MR", 9: "MRI_ROOM_2"}),
    )
    ack = client.exchange(sent)
    assert ack.code == "AA", ack.text
    order = by_placer(services, "PLC-OMI")
    assert (order.accession_number, order.modality, order.station_ae_title) == ("IPC-ACC-1", "MR", "MRI_ROOM_2")
    assert (order.scheduled_at, order.priority) == (datetime(2030, 1, 2, 9, 30, tzinfo=UTC), "URGENT")
    assert order.accession_number != order.order_number


def test_change_cancel_discontinue(services: Services, client: MllpClient) -> None:
    for n in (1, 2, 3):
        assert client.exchange(new_order(f"NEW-{n}", f"P-{n}")).code == "AA"
    changed = message("ORM^O01", "XO-1", pid(name="Roe^Janet"), orc("XO", "P-1", o7="^^^^^S"),
                      obr("P-1", procedure="CTABD^CT abdomen"))
    ack = client.exchange(changed)
    assert ack.code == "AA", ack.text
    order = by_placer(services, "P-1")
    assert (order.patient_name, order.priority, order.procedure_code) == ("Roe^Janet", "STAT", "CTABD")
    assert order.procedure_description == "CT abdomen" and order.status == "ORDERED"

    ack = client.exchange(order_control("CA", "CA-1", "P-2", o16="^Patient refused"))
    assert ack.code == "AA" and ack.text.endswith("CANCELLED")
    cancelled = by_placer(services, "P-2")
    assert cancelled.status == "CANCELLED"
    last = services.orders.history(cancelled.pk)[-1]
    assert (last.changed_by, last.reason) == ("hl7:RIS", "Patient refused")
    assert client.exchange(order_control("CA", "CA-2", "P-2")).text.endswith("was already CANCELLED")
    assert client.exchange(order_control("DC", "DC-1", "P-3")).code == "AA"
    assert by_placer(services, "P-3").status == "DISCONTINUED"

    # By our order number as the filler order number (ORC-3), as a RIS that learnt it would.
    number = by_placer(services, "P-1").order_number
    assert client.exchange(message("ORM^O01", "CA-3", pid(), orc("CA", "", number), obr())).code == "AA"
    assert by_placer(services, "P-1").status == "CANCELLED"

    unknown = client.exchange(order_control("CA", "CA-4", "NO-SUCH"))
    assert (unknown.code, unknown.control_id, unknown.error_code) == ("AE", "CA-4", "204")
    assert "no order with placer NO-SUCH" in unknown.text
    closed = client.exchange(order_control("XO", "XO-2", "P-3"))
    assert closed.code == "AE" and "DISCONTINUED" in closed.text


def test_appointments(services: Services, client: MllpClient) -> None:
    assert client.exchange(new_order("NEW-S", "P-S")).code == "AA"
    booked = client.exchange(appointment("S12", "S12-1", "P-S", start="20300301080000", minutes="30", room="CT^ROOM 2"))
    assert booked.code == "AA", booked.text
    order = by_placer(services, "P-S")
    assert (order.status, order.scheduled_at) == ("SCHEDULED", datetime(2030, 3, 1, 8, tzinfo=UTC))
    assert (order.duration_minutes, order.location) == (30, "CT ROOM 2")
    assert client.exchange(appointment("S13", "S13-1", "P-S", start="203003021015-0100")).code == "AA"
    order = by_placer(services, "P-S")
    assert (order.status, order.scheduled_at) == ("SCHEDULED", datetime(2030, 3, 2, 11, 15, tzinfo=UTC))
    assert client.exchange(appointment("S14", "S14-1", "P-S", room="CT^ROOM 3")).code == "AA"
    assert by_placer(services, "P-S").location == "CT ROOM 3"
    no_time = client.exchange(appointment("S13", "S13-2", "P-S"))
    assert (no_time.code, no_time.error_code) == ("AE", "101") and "AIS-4" in no_time.text
    assert client.exchange(appointment("S15", "S15-1", "P-S")).code == "AA"
    assert by_placer(services, "P-S").status == "CANCELLED"
    late = client.exchange(appointment("S12", "S12-2", "P-S", start="20300301080000"))
    assert late.code == "AE" and "CANCELLED" in late.text
    unknown = client.exchange(appointment("S12", "S12-3", "NO-SUCH", start="20300301080000"))
    assert (unknown.code, unknown.error_code) == ("AE", "204")


def test_patient_update_and_merge(services: Services, client: MllpClient) -> None:
    for n, patient in ((1, "OLD-1"), (2, "OLD-1"), (3, "OTHER")):
        assert client.exchange(new_order(f"NEW-{n}", f"P-{n}", patient_id=patient)).code == "AA"
    assert client.exchange(order_control("CA", "CA-1", "P-2")).code == "AA"
    update = message("ADT^A08^ADT_A01", "A08-1", pid("OLD-1", name="Doe^Janet", birth="19700204", sex="F"))
    ack = client.exchange(update)
    assert ack.code == "AA", ack.text
    assert by_placer(services, "P-1").patient_name == "Doe^Janet"
    assert by_placer(services, "P-1").patient_birth_date == "19700204"
    assert by_placer(services, "P-2").patient_name == "Doe^Jane^Q"  # closed orders keep what they had
    nobody = client.exchange(message("ADT^A08", "A08-2", pid("NOBODY", name="X^Y")))
    assert nobody.code == "AA" and "nothing changed" in nobody.text

    merge = message("ADT^A40^ADT_A39", "A40-1", pid("NEW-1", name="Doe^Janet^M"), seg("MRG", {1: "OLD-1^^^HOSP^MR"}))
    ack = client.exchange(merge)
    assert ack.code == "AA", ack.text
    moved = services.orders.search(OrderFilter(patient_id="NEW-1"))
    assert sorted(o.placer_order_number or "" for o in moved) == ["P-1", "P-2"]
    assert {o.patient_name for o in moved} == {"Doe^Janet^M"}
    assert services.orders.search(OrderFilter(patient_id="OLD-1")) == []
    assert by_placer(services, "P-3").patient_id == "OTHER"
    no_mrg = client.exchange(message("ADT^A40", "A40-2", pid("NEW-1")))
    assert (no_mrg.code, no_mrg.error_code) == ("AE", "101") and "MRG" in no_mrg.text


BAD_CONTENT = [
    # (what, message, ack code, HL7 error code, words in the reason)
    ("no PID-3", new_order("B-1", "PB-1", patient_id=""), "AE", "101", "PID-3"),
    ("no PID", message("ORM^O01", "B-2", orc("NW", "PB-2"), obr("PB-2")), "AE", "101", "PID"),
    ("no ORC", message("ORM^O01", "B-3", pid()), "AE", "101", "ORC"),
    ("unknown modality", new_order("B-4", "PB-4", modality="XX"), "AE", "102", "modality"),
    ("accession too long", new_order("B-5", "PB-5", accession="A" * 17), "AE", "102", "accession_number (OBR-18"),
    ("bad date", new_order("B-6", "PB-6", o36="2030-01-01"), "AE", "102", "not an HL7 date"),
    ("bad order control", message("ORM^O01", "B-7", pid(), orc("ZZ", "PB-7"), obr()), "AE", "102", "ORC-1"),
    ("bad sex", message("ORM^O01", "B-8", pid(sex="Q"), orc("NW", "PB-8"), obr()), "AE", "102", "PID-8"),
    ("unsupported type", message("ADT^A01", "B-9", pid()), "AR", "200", "ADT^A01 is not a message type"),
    ("unsupported version", message("ORM^O01", "B-10", pid(), version="3.0"), "AR", "200", "version"),
    ("no control ID", new_order("", "PB-11"), "AE", "101", "MSH-10"),
    ("NUL in a name", message("ORM^O01", "B-12", pid(name="Do\x00e"), orc("NW", "PB-12"), obr()), "AE", "102",
     "NUL character"),
]


@pytest.mark.parametrize("what, sent, code, error_code, words", BAD_CONTENT, ids=[c[0] for c in BAD_CONTENT])
def test_bad_content_is_answered_with_the_reason(
    services: Services, client: MllpClient, what: str, sent: str, code: str, error_code: str, words: str
) -> None:
    ack = client.exchange(sent)
    assert (ack.code, ack.error_code) == (code, error_code), ack.raw
    assert words in ack.text and words in ack.error_text
    assert ack.field("ERR", 4) == "E"
    assert services.orders.search(OrderFilter()) == []
    logged = Hl7Log(services.engine).search(MessageFilter())
    assert [(m.ack_code, m.outcome) for m in logged] == [(code, ack.error_text)]
    # The same connection goes on.
    assert client.exchange(new_order("GOOD", "P-GOOD")).code == "AA"


def test_several_orders_in_one_message_apply_together_or_not_at_all(services: Services, client: MllpClient) -> None:
    refused = message("ORM^O01", "MULTI-1", pid(), orc("NW", "P-A"), obr("P-A"), orc("NW", "P-B"),
                      obr("P-B", modality="XX"))
    assert client.exchange(refused).code == "AE"
    assert services.orders.search(OrderFilter()) == []
    both = message("ORM^O01", "MULTI-2", pid(), orc("NW", "P-A"), obr("P-A"), orc("NW", "P-B"),
                   obr("P-B", modality="MR", procedure="MRBRAIN^MR brain"))
    ack = client.exchange(both)
    assert ack.code == "AA" and ack.text.count("NW: created") == 2
    assert (by_placer(services, "P-A").modality, by_placer(services, "P-B").modality) == ("CT", "MR")
    # Refused while being applied (the second accession number is taken): the first order goes too.
    late = message("ORM^O01", "MULTI-3", pid(), orc("NW", "P-C"), obr("P-C", accession="ACC-C"), orc("NW", "P-D"),
                   obr("P-D", accession=by_placer(services, "P-A").accession_number))
    ack = client.exchange(late)
    assert ack.code == "AE" and "already used" in ack.text
    assert services.orders.search(OrderFilter(placer_order_number="P-C")) == []
    assert len(services.orders.search(OrderFilter())) == 2


def test_a_duplicate_placer_order_number_is_refused(services: Services, client: MllpClient) -> None:
    assert client.exchange(new_order("D-1", "P-D")).code == "AA"
    again = client.exchange(new_order("D-2", "P-D"))
    assert again.code == "AE" and "already order ORD-" in again.text
    assert len(services.orders.search(OrderFilter())) == 1


def test_a_repeated_control_id_is_applied_once_and_answered_alike(services: Services, client: MllpClient) -> None:
    first = client.exchange(new_order("SAME", "P-1"))
    second = client.exchange(new_order("SAME", "P-1"))
    assert (second.code, second.text, second.control_id) == (first.code, first.text, "SAME")
    refused = client.exchange(new_order("SAME-AE", "P-2", modality="XX"))
    assert client.exchange(new_order("SAME-AE", "P-2")).text == refused.text  # the first answer, not a new try
    # The same control ID from another sending application is another message.
    other = client.exchange(message("ORM^O01", "SAME", pid(), orc("NW", "P-3"), obr("P-3"), sender="OTHER"))
    assert other.code == "AA"
    assert sorted(o.placer_order_number or "" for o in services.orders.search(OrderFilter())) == ["P-1", "P-3"]
    logged = Hl7Log(services.engine).search(MessageFilter(control_id="SAME"))
    assert [(m.sending_application, m.duplicate, m.ack_code) for m in logged] == [
        ("OTHER", False, "AA"), ("RIS", True, "AA"), ("RIS", False, "AA"),
    ]
    assert logged[1].outcome.startswith(f"repeat of message #{logged[2].pk}, not applied again")
    assert logged[2].order_pk == by_placer(services, "P-1").pk


def test_the_same_message_on_many_connections_at_once_is_applied_once(
    services: Services, listener: Hl7Listener
) -> None:
    sent = new_order("RACE-1", "P-RACE")

    def send() -> tuple[str, str]:
        with MllpClient(listener.port) as connection:
            ack = connection.exchange(sent)
            return ack.code, ack.text

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: send(), range(8)))
    assert len(set(answers)) == 1 and answers[0][0] == "AA", answers
    assert len(services.orders.search(OrderFilter())) == 1
    logged = Hl7Log(services.engine).search(MessageFilter(control_id="RACE-1"))
    assert sorted(m.duplicate for m in logged) == [False] + [True] * 7


def test_ar_when_the_database_is_down_and_the_message_applies_when_sent_again(services: Services) -> None:
    down = open_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    orders_down = OrderService(OrderRepository(down), reference=ReferenceData(ReferenceRepository(down)))
    sent = new_order("AR-1", "P-AR")
    try:
        # Nothing reachable at all: AR, and nothing could be kept.
        nothing = Hl7Receiver(Hl7Intake(orders_down, Hl7OrderRepository(down)), Hl7Log(down))
        _answer_over_mllp(nothing, sent, "AR", "database unavailable")
        # The log is up but the orders are not: AR, logged, and the claim given back.
        half = Hl7Receiver(Hl7Intake(orders_down, Hl7OrderRepository(down)), Hl7Log(services.engine))
        _answer_over_mllp(half, sent, "AR", "database unavailable")
    finally:
        down.dispose()
    with running_hl7_listener(services) as listener, MllpClient(listener.port) as client:
        assert client.exchange(sent).code == "AA"
        assert client.exchange(sent).code == "AA"
    assert len(services.orders.search(OrderFilter())) == 1
    codes = [(m.ack_code, m.duplicate) for m in Hl7Log(services.engine).search(MessageFilter(control_id="AR-1"))]
    assert codes == [("AA", True), ("AA", False), ("AR", False)]


def _answer_over_mllp(receiver: Hl7Receiver, sent: str, code: str, words: str) -> None:
    server = MllpServer(receiver, "127.0.0.1", 0, max_message_bytes=1024 * 1024)
    server.start()
    try:
        with MllpClient(server.port) as client:
            ack = client.exchange(sent)
    finally:
        server.stop()
    assert (ack.code, ack.error_code) == (code, "207"), ack.raw
    assert words in ack.text
