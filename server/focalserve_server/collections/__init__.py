"""Collections searched under conditions: one source of truth, FAISS replicas that follow its log.

- `model`: what the store holds (collections, items, conditions, changes, build chunks).
- `store`: the interface both engines implement; `factory.open_store` picks one from the settings.
- `sqlite`, `postgres`: the engines (SQLite for one host, PostgreSQL shared by replicas).
- `health`: what the disk and the database beneath the store are doing (readiness, metrics).
- `index_kinds`: the index kinds as configurations, and how a condition's is chosen.
- `indexes`: one FAISS index over item ids, in any of those configurations.
- `replica`: this process's FAISS indexes, kept current by applying the change log, with snapshots
  and background rebuilds.
- `builder`: condition backfills, claimed a chunk at a time by any replica.
- `service`: what the API calls.
"""
