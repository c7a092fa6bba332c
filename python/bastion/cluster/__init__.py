"""Scale-out on Ray (issue 16): bastion's locked-down Ray cluster.

* ``settings`` — ``[cluster]``: node address, ports, token and TLS file paths, private directories.
* ``preflight`` — the checks a node or driver passes before Ray starts (each refusal names the setting).
* ``node`` — ``ray start`` / stop of one node with token auth, mutual TLS, no dashboard, no client server.
* ``token``, ``pki`` — the cluster token file and the dedicated cluster CA (``bastion cluster ...``).
* ``driver`` — joining as a Ray driver; the only module that imports Ray (import-linter: ``ray-home``).

Serve replicas, the tenant-aware router and the replica join proof are later parts of issue 16.
docs/cluster.md is the operator's guide.
"""
