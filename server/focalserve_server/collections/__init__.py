"""Collections searched under conditions: one source of truth, FAISS replicas that follow its log.

- `model`: what the store holds (collections, items, conditions, changes, build chunks).
- `store`: the interface both engines implement; `open_store` picks one from the settings.
- `sqlite`, `postgres`: the engines (SQLite for one host, PostgreSQL shared by replicas).
- `indexes`: FAISS index kinds behind one class.
- `replica`: this process's FAISS indexes, kept current by applying the change log, with snapshots.
- `builder`: condition backfills, claimed a chunk at a time by any replica.
- `service`: what the API calls.
"""
