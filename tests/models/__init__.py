"""Tests of models/, the database: its tables and migrations."""
