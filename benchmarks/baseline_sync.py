"""A sync script as a typical user would write it, for comparison with calsync.

It keeps no state, so every run does the same work. It pages through the
list at 100 per page, one request after the other. Then it fetches the
details of every booking one at a time with ``requests.get`` and builds the
file with icalendar. It is deliberately plain and is not part of calsync.
"""

from __future__ import annotations

from datetime import datetime

import icalendar
import requests

TIMEOUT_SECONDS = 30


def sync(base_url: str, secret: str, output: str) -> int:
    """Write every booking of the API at ``base_url`` to ``output`` as iCalendar; return the number of events."""
    headers = {"Authorization": secret}
    bookings = []
    page = 1
    while True:
        response = requests.get(
            f"{base_url}/business/booking/list",
            params={"page": page, "limit": 100},
            headers=headers,
            timeout=TIMEOUT_SECONDS,
        )
        response.raise_for_status()
        body = response.json()
        bookings += body["data"]
        if page >= body["pagination"]["pages"]:
            break
        page += 1

    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//Bookings export script//EN")
    calendar.add("version", "2.0")
    for row in bookings:
        response = requests.get(
            f"{base_url}/business/booking/details/{row['_id']}", headers=headers, timeout=TIMEOUT_SECONDS
        )
        response.raise_for_status()
        calendar.add_component(to_event(response.json()["data"]))

    with open(output, "wb") as file:
        file.write(calendar.to_ical())
    return len(bookings)


def to_event(booking: dict) -> icalendar.Event:
    event = icalendar.Event()
    event.add("uid", f"{booking['_id']}@bookings.example.com")
    event.add("dtstamp", parse_time(booking.get("updatedat") or booking["createdat"]))
    event.add("summary", booking.get("title") or "Booking")
    event.add("dtstart", parse_time(booking["starttime"]))
    if booking.get("endtime"):
        event.add("dtend", parse_time(booking["endtime"]))
    event.add("description", booking.get("description") or "")
    event.add("status", "CANCELLED" if booking.get("status") == "cancelled" else "CONFIRMED")
    location = booking.get("location") or {}
    event.add("location", location.get("address") or location.get("bookinglink") or "")
    return event


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)
