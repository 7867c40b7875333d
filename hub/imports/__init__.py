"""Importers: bring records from other systems (CRM exports) into canonical Cases."""

from hub.imports.crm import ExportFormat, ImportedRow, UnknownFormat, detect_format, read_export

__all__ = ["ExportFormat", "ImportedRow", "UnknownFormat", "detect_format", "read_export"]
