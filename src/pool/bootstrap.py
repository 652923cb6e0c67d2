def _pysandbox_bootstrap():
    # A pooled sandbox's interpreter: started ahead of time, it says it is ready with one
    # byte on stdout (pysandbox strips it) and waits for its request on stdin. The
    # request: a 4-byte little-endian length, then NUL-separated fields: mode ("c" for
    # code, "f" for a file), the code or the file's path, the working directory, the
    # argument count, the arguments, then KEY=VALUE environment entries. What follows on
    # stdin is the script's stdin. The script then runs as __main__ exactly as
    # `python -c CODE ARGS` or `python FILE ARGS` would run it.
    import os
    import sys

    def read(n):
        b = b""
        while len(b) < n:
            chunk = os.read(0, n - len(b))
            if not chunk:
                os._exit(0)  # nobody claimed this sandbox
            b += chunk
        return b

    os.write(1, b"\x06")
    fields = read(int.from_bytes(read(4), "little")).split(b"\0")
    dec = os.fsdecode
    mode, source, cwd, argc = fields[0], fields[1], dec(fields[2]), int(fields[3])
    args = [dec(a) for a in fields[4 : 4 + argc]]
    for kv in fields[4 + argc :]:
        k, _, v = kv.partition(b"=")
        os.environb[k] = v
    os.chdir(cwd)
    main = sys.modules["__main__"].__dict__
    main.pop("_pysandbox_bootstrap", None)
    if mode == b"c":
        name = "<string>"
        sys.argv[:] = ["-c"] + args
        code = source.decode("utf-8", "surrogateescape")
    else:
        name = dec(source)
        sys.argv[:] = [name] + args
        sys.path[0] = os.path.dirname(name)
        main["__file__"] = name
        main["__cached__"] = None
        external = sys.modules["_frozen_importlib_external"]
        main["__loader__"] = external.SourceFileLoader("__main__", name)
        with open(name, "rb") as f:
            code = f.read()
    del read, fields, dec, mode, source, cwd, argc, args
    try:
        exec(compile(code, name, "exec", dont_inherit=True), main)
    except SystemExit:
        raise
    except BaseException as e:
        # As the interpreter reports an uncaught exception, without this frame.
        tb = e.__traceback__.tb_next if e.__traceback__ else None
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        if isinstance(e, KeyboardInterrupt):
            import signal

            sys.stdout.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        raise SystemExit(1) from None


_pysandbox_bootstrap()
