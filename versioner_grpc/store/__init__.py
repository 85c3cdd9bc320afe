"""The store: Peewee models, the event transaction, reads, the group-commit writer.

Works the same on SQLite (default) and PostgreSQL.
"""
