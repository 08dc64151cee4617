"""The write side's application layer: one handler per use case, one bus for what follows a commit.

adapter (api/, ingest/, scheduler, search driver) -> command (`commands`) ->
`bus.MessageBus` -> handler (`experiments`, `runs`, `accounts`, `reports`) ->
domain aggregate -> `unit_of_work` (the event store) -> `effects` by committed
event type. See ARCHITECTURE.md.
"""
