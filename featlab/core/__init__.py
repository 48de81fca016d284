"""Layer 1, core: what every layer shares and nothing else imports below it.

errors (``FeatlabError``), fileio (hashing, atomic writes, strict JSON, the safe torch loader), versions
(library versions, hardware, clocks), workspace (the work folder), checks (settings validated before any heavy
import) and metrics (honest binary metrics and curves).
"""
