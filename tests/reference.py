"""An independent, deliberately naive replay of schedule *files* (SPEC sections 3 and 5).

It reads the JSON documents themselves (names, not indices) and shares no code
with planner.simulate, so tests can check the simulator and every solver
against it.  :func:`spec_fingerprint` is SPEC section 2's fingerprint, written
from the SPEC's text without planner.model.
"""

import hashlib
import json


_SECONDS = {"s": 1, "ms": 1000, "us": 1000000, "ns": 1000000000}


def reference_replay(model_doc, schedule_doc):
    """Return dict(valid, peak_bytes, compute, forwards, error) for parsed documents.

    A paging schedule (``edgeplan-schedule/2``, its own ``storage`` object)
    also gives ``transfer`` (in the model's time unit), ``pageouts``,
    ``pageins`` and ``overhead`` (with the transfer); an ``edgeplan-schedule/3``
    also ``time`` (transfers beside compute), and ``overhead`` from it.  A
    schedule with ``power_w`` on a model timed in seconds also gives
    ``energy_j`` (docs/format.md, "Energy in a schedule"), unless it transfers
    without the storage's ``transfer_power_w``.
    """
    layers = {}
    order = []
    for pos, raw in enumerate(model_doc["layers"]):
        entry = dict(raw)
        if "inputs" not in entry:
            entry["inputs"] = ["input"] if pos == 0 else [order[-1]]
        entry.setdefault("saved_bytes", 0)
        entry.setdefault("needs_inputs", True)
        entry.setdefault("needs_output", False)
        entry.setdefault("workspace_forward", 0)
        entry.setdefault("workspace_backward", 0)
        layers[entry["name"]] = entry
        order.append(entry["name"])
    producers = {name: [p for p in e["inputs"] if p != "input"] for name, e in layers.items()}
    consumers = {name: [] for name in layers}
    for name, prods in producers.items():
        for p in prods:
            consumers[p].append(name)
    sink = [n for n in order if not consumers[n]][0]
    A, S, G, D, P = set(), set(), set(), set(), set()
    PS = set()  # records (saved data) with a copy on the storage
    paging_formats = ("edgeplan-schedule/2", "edgeplan-schedule/3")
    storage = schedule_doc.get("storage") if schedule_doc.get("format") in paging_formats else None
    # backward records are paged in an edgeplan-schedule/3 only (SPEC section 5's /2 has output ops alone)
    records = storage if schedule_doc.get("format") == "edgeplan-schedule/3" else None
    pageouts = pageins = 0
    transfer_s = []

    def memory():
        return (
            model_doc["input_bytes"]
            + sum(layers[x]["output_bytes"] for x in A)
            + sum(layers[x]["saved_bytes"] for x in S)
            + sum(layers[x]["output_bytes"] for x in G)
        )

    def stored():
        return sum(layers[x]["output_bytes"] for x in P) + sum(layers[x]["saved_bytes"] for x in PS)

    peak = memory()
    compute = 0.0
    forwards = 0
    for k, op in enumerate(schedule_doc["ops"]):
        name = op["layer"]
        e = layers[name]
        if op["op"] == "forward":
            if name in A or name in D or (op["save"] and (name in S or name in PS)):
                return {"valid": False, "error": k}
            if any(p not in A for p in producers[name]):
                return {"valid": False, "error": k}
            A.add(name)
            if op["save"]:
                S.add(name)
            peak = max(peak, memory() + e["workspace_forward"])
            compute += e["forward"]
            forwards += 1
        elif op["op"] == "backward":
            if name not in S or name in D:
                return {"valid": False, "error": k}
            if e["needs_inputs"] and any(p not in A for p in producers[name]):
                return {"valid": False, "error": k}
            if e["needs_output"] and name not in A:
                return {"valid": False, "error": k}
            if any(c not in D for c in consumers[name]):
                return {"valid": False, "error": k}
            if name == sink:
                G.add(name)
            # An input whose gradient an earlier backward started gets a fresh
            # gradient, added into the held one: it counts now and is gone after.
            fresh = sum(layers[p]["output_bytes"] for p in producers[name] if p in G)
            for p in producers[name]:
                G.add(p)
            peak = max(peak, memory() + fresh + e["workspace_backward"])
            S.discard(name)
            G.discard(name)
            P.discard(name)
            PS.discard(name)
            D.add(name)
            compute += e["backward"]
        elif op["op"] == "free":
            if name not in A:
                return {"valid": False, "error": k}
            if name in S and e["needs_output"]:
                return {"valid": False, "error": k}
            if any(c in S and layers[c]["needs_inputs"] for c in consumers[name]):
                return {"valid": False, "error": k}
            if name == sink and name not in D:  # the loss reads it until the sink's backward
                return {"valid": False, "error": k}
            A.discard(name)
        elif op["op"] == "pageout" and storage is not None:
            if name not in A or name in P:
                return {"valid": False, "error": k}
            P.add(name)
            if "bytes" in storage and stored() > storage["bytes"]:
                return {"valid": False, "error": k}
            pageouts += 1
            transfer_s.append(
                storage.get("write_latency_s", 0) + e["output_bytes"] / storage["write_bytes_per_s"]
            )
        elif op["op"] == "pagein" and storage is not None:
            if name not in P or name in A or name in D:
                return {"valid": False, "error": k}
            A.add(name)
            peak = max(peak, memory())
            pageins += 1
            transfer_s.append(
                storage.get("read_latency_s", 0) + e["output_bytes"] / storage["read_bytes_per_s"]
            )
        elif op["op"] == "pageout_saved" and records is not None:
            if name not in S or name in PS:
                return {"valid": False, "error": k}
            PS.add(name)
            if "bytes" in storage and stored() > storage["bytes"]:
                return {"valid": False, "error": k}
            pageouts += 1
            transfer_s.append(
                storage.get("write_latency_s", 0) + e["saved_bytes"] / storage["write_bytes_per_s"]
            )
        elif op["op"] == "drop_saved" and records is not None:
            if name not in S or name not in PS:
                return {"valid": False, "error": k}
            S.discard(name)
        elif op["op"] == "pagein_saved" and records is not None:
            if name not in PS or name in S or name in D:
                return {"valid": False, "error": k}
            S.add(name)
            peak = max(peak, memory())
            pageins += 1
            transfer_s.append(
                storage.get("read_latency_s", 0) + e["saved_bytes"] / storage["read_bytes_per_s"]
            )
        else:
            return {"valid": False, "error": k}
    if D != set(order):
        return {"valid": False, "error": None}
    result = {"valid": True, "peak_bytes": peak, "compute": compute, "forwards": forwards, "error": None}
    if storage is not None:
        transfer = sum(transfer_s) * _SECONDS[model_doc["time_unit"]]
        baseline = sum(e["forward"] + e["backward"] for e in layers.values())
        result.update(
            transfer=transfer,
            pageouts=pageouts,
            pageins=pageins,
            overhead=(compute + transfer) / baseline - 1 if baseline > 0 else 0.0,
        )
        if schedule_doc["format"] == "edgeplan-schedule/3" and storage.get("overlap", True):
            time = _overlap_time(layers, sink, schedule_doc["ops"], storage, _SECONDS[model_doc["time_unit"]])
            result.update(time=time, overhead=time / baseline - 1 if baseline > 0 else 0.0)
    power = schedule_doc.get("power_w")
    unit = _SECONDS.get(model_doc.get("time_unit"))
    transfer_power = (storage or {}).get("transfer_power_w")
    if power is not None and unit is not None and (not transfer_s or transfer_power is not None):
        result["energy_j"] = compute / unit * power + sum(transfer_s) * (transfer_power or 0.0)
    return result


def _overlap_time(layers, sink, ops, storage, factor):
    """docs/format.md, edgeplan-schedule/3, in the model's time unit (``factor`` per second).

    Compute ops run one after another; transfers one after another on the copy engine, each
    starting at its issue (when compute reaches it) or when the engine frees up; a forward waits
    for pageins of its inputs, a backward for those of the outputs its saved data reads (and the
    sink's own), a free for every earlier transfer of its layer.
    """
    clock = engine = 0.0
    pagein_end, transfer_end = {}, {}
    record_in_end, record_out_end = {}, {}
    for op in ops:
        name, e = op["layer"], layers[op["layer"]]
        if op["op"] in ("forward", "backward"):
            if op["op"] == "forward":
                reads = [p for p in e["inputs"] if p != "input"]
            else:
                reads = [p for p in e["inputs"] if p != "input"] if e["needs_inputs"] else []
                reads += [name] if (e["needs_output"] or name == sink) else []
            waits = [pagein_end.get(r, 0.0) for r in reads]
            if op["op"] == "backward":
                waits.append(record_in_end.get(name, 0.0))
            clock = max([clock] + waits) + e[op["op"]]
        elif op["op"] == "free":
            clock = max(clock, transfer_end.get(name, 0.0))
        elif op["op"] == "drop_saved":
            clock = max(clock, record_out_end.get(name, 0.0))
        else:
            size = e["saved_bytes"] if op["op"].endswith("_saved") else e["output_bytes"]
            if op["op"].startswith("pageout"):
                seconds = storage.get("write_latency_s", 0) + size / storage["write_bytes_per_s"]
            else:
                seconds = storage.get("read_latency_s", 0) + size / storage["read_bytes_per_s"]
            engine = max(engine, clock) + seconds * factor
            if op["op"] == "pageout_saved":
                record_out_end[name] = engine
            elif op["op"] == "pagein_saved":
                record_in_end[name] = engine
            else:
                transfer_end[name] = engine
                if op["op"] == "pagein":
                    pagein_end[name] = engine
    return max(clock, engine)


def replay_solution(model, solution):
    """Replay a planner Solution's written JSON with the reference and return its result."""
    doc = model.document if model.document is not None else model.to_dict()
    return reference_replay(doc, json.loads("".join(solution.schedule.iter_json(model))))


# SPEC section 2: the fields of a layer the fingerprint covers, and their
# defaults from SPEC section 1 (``inputs`` defaults to the previous layer).
_COVERED = {
    "saved_bytes": 0,
    "needs_inputs": True,
    "needs_output": False,
    "workspace_forward": 0,
    "workspace_backward": 0,
    "params_bytes": 0,
}


def spec_fingerprint(model_doc):
    """``sha256:`` + hex digest of the structure and sizes of a model document."""
    names = [raw["name"] for raw in model_doc["layers"]]
    layers = []
    for pos, raw in enumerate(model_doc["layers"]):
        entry = dict(_COVERED)
        entry.update({key: raw[key] for key in _COVERED if key in raw})
        entry["name"] = raw["name"]
        entry["output_bytes"] = raw["output_bytes"]
        if "inputs" in raw:
            entry["inputs"] = raw["inputs"]
        else:
            entry["inputs"] = [names[pos - 1]] if pos else ["input"]
        layers.append(entry)
    obj = {"layers": layers, "input_bytes": model_doc["input_bytes"]}
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
