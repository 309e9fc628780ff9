"""calsync: keep an iCalendar feed in step with a business's Cashfin bookings."""

__version__ = "0.1.0"
