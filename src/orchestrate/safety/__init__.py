"""The guards every task runs inside: device leases, secret scanning, the spend budget."""
