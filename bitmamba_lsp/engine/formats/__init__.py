"""Model file formats, one module each. A format module holds the file layout (reader, writer,
validation), how the format is recognised in a local path, which files of a Hub repository it
needs, and how it builds a `Model`; it exports a `FORMAT` (`formats.base.ModelFormat`). The loader
(`engine/loader.py`) walks its tuple `FORMATS` in order: adding a format is a module here plus one
entry there (docs/where-things-go.md)."""
