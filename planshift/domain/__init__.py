"""The functional core: eligibility, credit checks, batch planning and money.

Pure functions over plain data. Nothing here imports Kafka, the directory or the
file system; the consumers gather the inputs and act on the results.
"""
