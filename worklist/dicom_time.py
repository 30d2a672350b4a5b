"""DICOM dates and times are local wall-clock values without an offset (PS3.5 6.2, DA and TM);
orders keep instants in UTC. These convert between the two in the configured zone
(MINIPACS_DICOM_TIMEZONE), or in the machine's own when none is configured."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

from pacs.dicom.attributes import normalize_time


def dicom_zone(name: str) -> tzinfo | None:
    """The zone named by the setting; None stands for the machine's local time (with its DST rules)."""
    return ZoneInfo(name) if name else None


def to_local(moment: datetime, zone: tzinfo | None) -> datetime:
    return moment.astimezone(zone) if zone is not None else moment.astimezone()


def local_to_utc(wall: datetime, zone: tzinfo | None) -> datetime:
    """A naive wall-clock datetime of `zone` as a UTC instant."""
    localised = wall.replace(tzinfo=zone) if zone is not None else wall.astimezone()
    return localised.astimezone(UTC)


def day_bounds(low: str, high: str, zone: tzinfo | None) -> tuple[datetime | None, datetime | None]:
    """[first instant of day `low`, first instant after day `high`) in UTC, from YYYYMMDD values
    (either may be empty for an open end)."""
    start = local_to_utc(datetime.combine(_day(low), time.min), zone) if low else None
    end = local_to_utc(datetime.combine(_day(high) + timedelta(days=1), time.min), zone) if high else None
    return start, end


def dicom_date(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def dicom_time(moment: datetime) -> str:
    return moment.strftime("%H%M%S")


def parse_dicom_datetime(da: str, tm: str, zone: tzinfo | None) -> datetime | None:
    """A DA and a TM value (local) as a UTC instant; None when the date is missing or malformed."""
    try:
        day = _day(da.strip())
    except ValueError:
        return None
    clock = normalize_time(tm) or "000000"
    try:
        wall = datetime.combine(day, time(int(clock[0:2]), int(clock[2:4]), min(int(clock[4:6]), 59)))
    except ValueError:
        return None
    return local_to_utc(wall, zone)


def _day(text: str) -> date:
    return datetime.strptime(text, "%Y%m%d").date()
