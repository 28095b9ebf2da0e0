"""Exports and imports to other toolkits: CTranslate2."""
