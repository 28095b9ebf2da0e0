"""Exports and imports to other toolkits: CTranslate2 (export), Hugging Face transformers (Marian import
and export)."""
