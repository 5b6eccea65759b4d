"""Delta CRDTs for Haven records: clocks, deltas, schema, merge.

``clock`` (HLC, dots, version vectors), ``delta`` (one write, compact CBOR),
``schema`` (record types, lanes, merge policies), ``record`` (the reference
merge and conflicts), ``writes`` (local writes), ``ids`` (patient ids),
``replica`` (an in-memory replica built from all of them).
"""
