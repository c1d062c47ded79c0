"""Assert that a call reaches the kernel path a test is named for, through
attncore._engine.plan_info (the plan the C driver would run)."""
from attncore._engine import plan_info


def assert_plan(fn, *args, path=None, split=None, additive=None, **kwargs):
    """Check plan_info(fn, *args, **kwargs): path "panel"/"rows"; split True
    (keys split into chunks, merged) or False; additive "product"/"tanh".
    Returns the plan."""
    plan = plan_info(fn, *args, **kwargs)
    if path is not None:
        assert plan["path"] == path, f"expected the {path} path, plan is {plan}"
    if split is not None:
        assert (plan["chunks"] > 1) == split, f"expected split={split}, plan is {plan}"
    if additive is not None:
        assert plan["additive_form"] == additive, f"expected the {additive} form, plan is {plan}"
    return plan


def sdpa_general(q, k, v, attn_mask=None, **kw):
    """scaled_dot_product_attention forced through the general path (not the
    fast path), for tests that compare the two."""
    from attncore import functional
    return functional._sdpa("scaled_dot_product_attention", q, k, v, attn_mask, 0.0,
                            kw.get("is_causal", False), kw.get("scale"), kw.get("enable_gqa", False),
                            False, False, kw.get("num_threads"), None, None, None)
