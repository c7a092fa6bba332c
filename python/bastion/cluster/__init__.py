"""Scale-out on Ray (issue 16): bastion's locked-down Ray cluster.

* ``settings`` — ``[cluster]``: node address, ports, token and TLS file paths, private directories.
* ``preflight`` — the checks a node or driver passes before Ray starts (each refusal names the setting).
* ``node`` — ``ray start`` / stop of one node with token auth, mutual TLS, no dashboard, no client server.
* ``token``, ``pki`` — the cluster token file and the dedicated cluster CA (``bastion cluster ...``).
* ``driver`` — joining as a Ray driver with the token and mutual TLS.
* ``spec`` — what a Serve replica is told to build (names and paths only, never secrets).
* ``replica`` — the body of a Serve replica: one engine behind the ``Engine`` seam, ``check_health``.
* ``pool`` — the front door's side: Serve with no proxy, one application per model, an ``EnginePool`` of
  proxies streaming through deployment handles (cancel, back-pressure, replica death mapped to bastion's
  errors), and the pool factory for ``bastion serve``.

Ray is imported only inside this package (import-linter: ``ray-home``), and only after ``driver.connect``
has set Ray's TLS variables. The vLLM engine inside a replica, the tenant-aware router and the replica join
proof are later parts of issue 16.
docs/cluster.md is the operator's guide.
"""
