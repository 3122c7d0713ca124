"""What each NATS user may publish and subscribe to: one definition per role.

Both deployments render these same lists into their nats-server configs: the
embedded default (``shared/nats_runtime.py``) and Ansible (filter ``xz_nats_permissions``).

Roles:
- ``site``: an edge site. Its edge processes connect to the site's leaf as this user, and the
  leaf links to the hub as the same role (``leaf-<site>``), so both ends confine it. It may
  publish its escalation requests, cancel its own turns (``cancel.<site>.*``) and read/watch
  the policy and device-admission KVs (JetStream API of the hub's domain, read-only calls); it may
  receive only replies on its own inbox prefix and worker heartbeats.
- ``worker``: a cloud worker. Takes requests of its model class, hears every site's cancels,
  answers on reply inboxes, publishes its own heartbeat. No JetStream: it cannot touch the policy.
- ``operator``: the policy and devices CLIs. The only user that may create and put those KVs.
"""

from __future__ import annotations

from shared import subjects

BUCKETS = (subjects.POLICY_BUCKET, subjects.DEVICES_BUCKET)  # what sites read and the operator writes
JS_DOMAIN = "hub"  # the hub's JetStream domain; clients behind a leaf reach the policy KV through it


def _kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def js_api_prefixes(domain: str | None) -> list[str]:
    """The JetStream API prefixes a client may use: the domain's, and the plain one (a lab hub)."""
    return ([f"$JS.{domain}.API"] if domain else []) + ["$JS.API"]


def kv_read_subjects(bucket: str, domain: str | None) -> list[str]:
    """Read-only JetStream calls on one KV bucket: info, direct/stream get, an ordered watch consumer."""
    stream = _kv_stream(bucket)
    out = []
    for api in js_api_prefixes(domain):
        out += [f"{api}.INFO", f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.MSG.GET.{stream}",
                f"{api}.DIRECT.GET.{stream}", f"{api}.DIRECT.GET.{stream}.>",
                f"{api}.CONSUMER.CREATE.{stream}", f"{api}.CONSUMER.CREATE.{stream}.>",
                f"{api}.CONSUMER.DELETE.{stream}.>", f"{api}.CONSUMER.INFO.{stream}.>"]
    return out + [f"$JS.FC.{stream}.>"]


def site_permissions(site: str, model_classes: list[str], domain: str | None = JS_DOMAIN,
                     per_site_inbox: bool = True, buckets: tuple[str, ...] = BUCKETS) -> dict:
    publish = [subjects.escalate(c) for c in sorted(set(model_classes))] + [subjects.cancel_site(site)]
    for bucket in buckets:
        publish += kv_read_subjects(bucket, domain)
    inbox = f"_INBOX.{subjects.token(site, 'site')}.>" if per_site_inbox else "_INBOX.>"
    return {"publish": {"allow": publish}, "subscribe": {"allow": [inbox, subjects.HEARTBEAT_ALL]}}


def worker_permissions(name: str, model_class: str) -> dict:
    return {"publish": {"allow": ["_INBOX.>", subjects.heartbeat(model_class, name)]},
            "subscribe": {"allow": [subjects.escalate(model_class), subjects.CANCEL_ALL]}}


def operator_permissions(domain: str | None = JS_DOMAIN, buckets: tuple[str, ...] = BUCKETS) -> dict:
    publish = [f"{api}.>" for api in js_api_prefixes(domain)]
    publish += [f"$KV.{b}.>" for b in buckets] + ["$JS.FC.>", "$JS.ACK.>"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": ["_INBOX.>"]}}
