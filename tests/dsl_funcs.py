"""Device functions defined in another module than the kernels that call them.

`_OFFSET` is visible only here: defaults and names inside these functions must resolve in this
module, as in Python.
"""

import tattletale as tt

_OFFSET = 1000


@tt.func
def add_offset(v, offset=_OFFSET):
    return v + offset


@tt.func
def sign(v):
    if v > 0:
        return 1
    if v < 0:
        return -1
    return 0
