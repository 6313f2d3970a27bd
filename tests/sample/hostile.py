"""A module whose attributes raise on access, like werkzeug's LocalProxy outside a request."""


class _Proxy:
    def __getattr__(self, name):
        raise RuntimeError("Working outside of application context.")


request = _Proxy()


def hidden_factory():
    def inner(x):
        if x:
            return 1
        return 0

    return inner


REGISTRY = {"inner": hidden_factory()}


def uses_proxy(flag):
    if flag:
        return "yes"
    return "no"
