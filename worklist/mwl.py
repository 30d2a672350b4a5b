"""The Modality Worklist (PS3.4 K): open orders as scheduled procedure steps for modalities.

Listed: every open order (ORDERED, SCHEDULED, IN_PROGRESS). An order not yet given a time has
no Scheduled Procedure Step Start Date, so it matches only queries that leave the date empty
(a modality asking for "today" does not see it; one asking for everything does). Without the
extended negotiation of combined date-time matching the start date and start time are matched
each on its own (PS3.4 C.2.2.2.5): a day range and, within those days, a time-of-day range.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs.dicom.query import Condition, MatchKind
from pacs.index.worklist import WorklistRepository
from worklist.dicom_time import day_bounds
from worklist.mwl_answer import AnswerKey, Values, answer_plan, order_values, worklist_answer
from worklist.mwl_encode import encoded_answer
from worklist.mwl_query import matches, parse_identifier

_LITTLE_ENDIAN: dict[str, bool] = {ImplicitVRLittleEndian: True, ExplicitVRLittleEndian: False}  # syntax -> implicit VR


class WorklistService:
    def __init__(self, repository: WorklistRepository, zone: tzinfo | None) -> None:
        self.repository = repository
        self.zone = zone

    def matching(self, identifier: Dataset) -> list[Values]:
        """The worklist items an identifier matches, as values; InvalidQuery for a malformed key."""
        query = parse_identifier(identifier)
        low, high = self._start_bounds(query.start_date)
        candidates = self.repository.open_orders(
            query.indexed, scheduled_from=low, scheduled_before=high, require_schedule=query.start_date is not None
        )
        found = []
        for order in candidates:
            values = order_values(order, self.zone)
            if all(matches(values, condition) for condition in query.checked):
                found.append(values)
        return found

    def plan(self, identifier: Dataset) -> tuple[AnswerKey, ...]:
        """The keys every answer to this identifier holds, worked out once per query."""
        return answer_plan(identifier)

    def answer(self, plan: tuple[AnswerKey, ...], values: Values, transfer_syntax: str = "") -> Dataset:
        """One response identifier, pre-encoded for the little endian syntaxes of the association."""
        implicit = _LITTLE_ENDIAN.get(transfer_syntax)
        if implicit is None:
            return worklist_answer(plan, values)
        return encoded_answer(plan, values, implicit=implicit)

    def find(self, identifier: Dataset) -> list[Dataset]:
        plan = self.plan(identifier)
        return [worklist_answer(plan, values) for values in self.matching(identifier)]

    def _start_bounds(self, condition: Condition | None) -> tuple[datetime | None, datetime | None]:
        if condition is None:
            return None, None
        if condition.kind == MatchKind.RANGE:
            return day_bounds(condition.values[0], condition.values[1], self.zone)
        if condition.kind == MatchKind.SINGLE:
            return day_bounds(condition.values[0], condition.values[0], self.zone)
        raise AssertionError(condition.kind)  # parse_condition gives dates only these two kinds
