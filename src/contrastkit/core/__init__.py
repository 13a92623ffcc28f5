"""What every package shares: errors a user can cause, the registry of named components, seeding,
and where data lives (``$CONTRASTKIT_DATA``)."""
