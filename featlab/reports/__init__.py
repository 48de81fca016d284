"""Layer 5, reports: the common JSON report schema, tables, plots and the comparison page.

report (schema, plots, comparison and matrix tables), tables (cell formatting shared by every table) and page
(the HTML comparison page).
"""
