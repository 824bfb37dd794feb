"""Triton kernels of sgfd_fast (installed as ``sgfd_fast.kernels``).

Each module holds ``_<op>_fwd_kernel`` (and friends) plus a host launcher ``<op>_triton`` that
allocates outputs and picks block sizes. Ops reach them through ``sgfd_fast.ops``; import this
package only where Triton is installed. On CPU the kernels run in Triton's interpreter
(``TRITON_INTERPRET=1`` set before the first import), which is how CI executes them.
"""
