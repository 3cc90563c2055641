"""Pure domain core: no asyncio, SQL, Jinja2, sockets or clock in here."""
