"""Fused per-element merge kernels (numba), free of any I/O.

Every kernel sees one tensor: `base` of shape (1, N) and `xs` of shape (n, N), all stored in the same
dtype (`kind`: float32 arrays, or bfloat16 / float16 bit patterns in uint16 arrays), and does its
float32 arithmetic one element at a time, so that a whole merge is one or two passes over memory
instead of dozens of tensor-wide temporaries.

The arithmetic reproduces mergekit 0.1.5's operation order (sequential sums over models, `addcmul`'s
fused multiply-add in linear, trimmed entries kept as signed zeros) so float32 results match it bit for
bit.

Work is split into `GROUPS` contiguous index ranges, each handled by one thread in index order. The
split does not depend on the thread count, which keeps the tie rule of the selections (lowest flat
index first) and therefore every result identical for any `--threads`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import get_num_threads, get_thread_id, njit, prange, types
from numba.extending import intrinsic, overload

from lrmerge import numba_cache

numba_cache.install()  # cache=True below: one user-wide copy per content of this file

GROUPS = 64
BLOCK = 1024  # elements per step of the blocked kernels
KIND_F32, KIND_BF16, KIND_F16 = 0, 1, 2  # storage: float32, uint16 (bf16 bits), int16 (fp16 bits)
# pass modes of the selection kernels
HIST_HIGH, HIST_LOW, COUNT_EQUAL = 0, 1, 2
SV_COLLECT = 3  # TIES-SV: merge without reserving, and collect the candidates (see _ties)
# vote rules
VOTE_WEIGHTED, VOTE_UNWEIGHTED = 0, 1
# sparsification rules
SPARSIFY_NONE, SPARSIFY_MAGNITUDE, SPARSIFY_RANDOM = 0, 1, 2


# --- bit-level conversions, as LLVM instructions -------------------------------------------------


@intrinsic
def _bf16_bits_to_f32(typingctx, v):
    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _f16_bits_to_f32(typingctx, v):
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(v), codegen  # v: any 16-bit integer holding the bits


@intrinsic
def _f32_to_f16_bits(typingctx, v):
    def codegen(context, builder, signature, args):
        # fptrunc rounds to nearest even, as torch's float -> half does
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.int16(types.float32), codegen


@intrinsic
def f32_bits(typingctx, v):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def fma32(typingctx, a, b, c):
    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32] * 3))
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


def load(a, i, j, kind):  # pragma: no cover - replaced by the overload inside kernels
    raise NotImplementedError


@overload(load, inline="always")
def _load_impl(a, i, j, kind):
    # The storage dtype says the format at compile time (bfloat16 bits in uint16, float16 bits in
    # int16), so no run-time branch stands in the way of vectorising the loops.
    # Unsigned indices: a signed one costs a negative-index wrap-around test on every access,
    # which stops the loops vectorising (about 10x slower on a plain read-merge-write loop).
    if a.dtype == types.float32:
        return lambda a, i, j, kind: a[np.uint64(i), np.uint64(j)]
    if a.dtype == types.uint16:
        return lambda a, i, j, kind: _bf16_bits_to_f32(a[np.uint64(i), np.uint64(j)])
    return lambda a, i, j, kind: _f16_bits_to_f32(a[np.uint64(i), np.uint64(j)])


def store(a, j, value, kind):  # pragma: no cover - replaced by the overload inside kernels
    raise NotImplementedError


@overload(store, inline="always")
def _store_impl(a, j, value, kind):
    if a.dtype == types.float32:

        def impl_f32(a, j, value, kind):
            a[np.uint64(0), np.uint64(j)] = value

        return impl_f32

    if a.dtype == types.uint16:

        def impl_bf16(a, j, value, kind):
            bits = f32_bits(value)
            # round to nearest even, as torch's float -> bfloat16 does for finite values
            bits = np.uint32(bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
            a[np.uint64(0), np.uint64(j)] = np.uint16(bits >> np.uint32(16))

        return impl_bf16

    def impl_f16(a, j, value, kind):
        a[np.uint64(0), np.uint64(j)] = _f32_to_f16_bits(value)

    return impl_f16


@njit(inline="always")
def rnd(x, arith):
    """Round a float32 to the arithmetic dtype (mergekit computes each step in it) and back."""
    if arith == KIND_BF16:
        bits = f32_bits(x)
        bits = np.uint32(bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
        return _bf16_bits_to_f32(np.uint16(bits >> np.uint32(16)))
    if arith == KIND_F16:
        return _f16_bits_to_f32(_f32_to_f16_bits(x))
    return x


def warm_up() -> None:
    """Load numba's typing registries and start its worker threads now (about 0.1 s on the first
    kernel call of a process), so the engine can do it while its first tensor is being read."""
    first_nonfinite(np.zeros((1, 1), np.float32), KIND_F32)


def thread_slabs() -> int:
    """How many per-thread histogram slabs a kernel call needs."""
    return get_num_threads()


@njit(inline="always")
def _orderable(x):
    """Map a float32 to a uint32 whose unsigned order is the float order."""
    bits = f32_bits(x)
    if bits & np.uint32(0x80000000):
        return np.uint32(~bits)
    return np.uint32(bits | np.uint32(0x80000000))


@njit(inline="always")
def _random_unit(seed, model, j):
    """Counter-based uniform [0, 1) draw (splitmix64): the same for any chunking or thread count."""
    z = np.uint64(seed) + np.uint64(model + 1) * np.uint64(0xD1B54A32D192ED03) + np.uint64(j)
    z = np.uint64(z + np.uint64(0x9E3779B97F4A7C15))
    z = np.uint64((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9))
    z = np.uint64((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB))
    z = np.uint64(z ^ (z >> np.uint64(31)))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(inline="always")
def _group_range(g, n):
    return g * n // GROUPS, (g + 1) * n // GROUPS


# --- input checks ---------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def first_nonfinite(a, kind):
    """Per row of `a`: the first index holding a non-finite value, or -1."""
    rows, n = a.shape
    found = np.full((GROUPS, rows), -1, np.int64)
    for g in prange(GROUPS):
        lo, hi = _group_range(g, n)
        for i in range(rows):
            for j in range(lo, hi):
                if not np.isfinite(load(a, i, j, kind)):
                    found[g, i] = j
                    break
    out = np.full(rows, -1, np.int64)
    for i in range(rows):
        for g in range(GROUPS):
            if found[g, i] >= 0:
                out[i] = found[g, i]
                break
    return out


# --- linear-type merges ---------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def linear(xs, kind, weights, normalize, out, out_kind):
    """sum_i w_i x_i (accumulated with fused multiply-adds, as mergekit's addcmul), / sum_i w_i."""
    n_models, n = xs.shape
    wsum = np.float32(0)
    for i in range(n_models):
        wsum = np.float32(wsum + weights[i])
    bad = np.full(GROUPS, -1, np.int64)
    for g in prange(GROUPS):
        lo, hi = _group_range(g, n)
        for j in range(lo, hi):
            acc = np.float32(0)
            for i in range(n_models):
                acc = fma32(load(xs, i, j, kind), weights[i], acc)
            if normalize:
                acc = np.float32(acc / wsum)
            if not np.isfinite(acc) and bad[g] < 0:
                bad[g] = j
            store(out, j, acc, out_kind)
    return bad.max()


@njit(inline="always")
def _task_arithmetic(base, xs, kind, weights, normalize, lam, arith, out, out_kind):
    """base + lambda * sum_i w_i (x_i - base) [/ sum_i w_i], in mergekit's operation order.

    arith: the dtype each step is rounded to (KIND_F32: none; sums accumulate in float32 and are
    rounded once, as torch sums low-precision tensors).
    """
    n_models, n = xs.shape
    divisor = np.float32(0)
    for i in range(n_models):
        divisor = np.float32(divisor + weights[i])
    divisor = rnd(divisor, arith)
    if abs(divisor) < 1e-8:
        divisor = np.float32(1)
    bad = np.full(GROUPS, -1, np.int64)
    for g in prange(GROUPS):
        lo, hi = _group_range(g, n)
        for j in range(lo, hi):
            b = load(base, 0, j, kind)
            mixed = np.float32(0)
            for i in range(n_models):
                u = rnd(np.float32(rnd(np.float32(load(xs, i, j, kind) - b), arith) * weights[i]), arith)
                mixed = u if i == 0 else np.float32(mixed + u)
            mixed = rnd(mixed, arith)
            if normalize:
                mixed = rnd(np.float32(mixed / divisor), arith)
            if lam != 1:
                mixed = rnd(np.float32(mixed * lam), arith)
            res = rnd(np.float32(b + mixed), arith)
            if not np.isfinite(res) and bad[g] < 0:
                bad[g] = j
            store(out, j, res, out_kind)
    return bad.max()


# --- magnitude selection (trim) -------------------------------------------------------------------


@njit(parallel=True, cache=True)
def trim_histogram(base, xs, kind, mode, bucket, threshold, hist, arith):
    """One pass of the radix select of the largest |x_i - base| per model.

    hist has one slab per thread (thread_slabs()). mode HIST_HIGH: hist[w, i, key >> 16] counts; HIST_LOW:
    hist[w, i, key & 0xFFFF] counts among keys whose high half equals bucket[i]; COUNT_EQUAL (hist
    then has GROUPS slabs): hist[g, i, 0] counts keys equal to threshold[i] in group g.
    key = the bit pattern of |tau| (ordered like the value, since it is non-negative).
    """
    for g in prange(GROUPS):
        _trim_histogram_group(base, xs, kind, mode, bucket, threshold, hist, g, arith)


@njit(inline="always")
def _trim_histogram_group(base, xs, kind, mode, bucket, threshold, hist, g, arith):
    n_models, n = xs.shape
    lo, hi = _group_range(g, n)
    # equal counts are kept per group: they set each group's share of the ties
    slab = np.int64(g) if mode == COUNT_EQUAL else np.int64(get_thread_id())
    for j in range(lo, hi):
        b = load(base, 0, j, kind)
        for i in range(n_models):
            key = f32_bits(abs(rnd(np.float32(load(xs, i, j, kind) - b), arith)))
            if mode == HIST_HIGH:
                hist[slab, i, key >> np.uint32(16)] += 1
            elif mode == HIST_LOW:
                if (key >> np.uint32(16)) == bucket[i]:
                    hist[slab, i, key & np.uint32(0xFFFF)] += 1
            elif key == threshold[i]:
                hist[slab, i, 0] += 1


@njit(inline="always")
def _trim_scan(base, xs, kind, window_lo, window_hi, above, cand_keys, cand_count, arith):
    """One pass of the windowed top-k select: per group g and model i, above[g, i] counts the keys
    beyond window_hi[i], and the keys inside [window_lo[i], window_hi[i]] (a window around the
    threshold expected from a sample) are copied into cand_keys[g, i, :], counted in
    cand_count[g, i] (counting goes on past the capacity, to tell an overflow). The exact threshold
    then follows from the candidates alone in the usual case.
    """
    n_models, n = xs.shape
    cap = cand_keys.shape[2]
    for g in prange(GROUPS):
        keys = np.empty(BLOCK, np.uint32)
        lo, hi = _group_range(g, n)
        for start in range(lo, hi, BLOCK):
            m = min(BLOCK, hi - start)
            for i in range(n_models):
                for j in range(m):
                    tau = rnd(np.float32(load(xs, i, start + j, kind) - load(base, 0, start + j, kind)), arith)
                    keys[j] = f32_bits(abs(tau))
                wlo, whi = window_lo[i], window_hi[i]
                beyond = 0
                for j in range(m):
                    beyond += keys[j] > whi
                above[g, i] += beyond
                c = cand_count[g, i]
                for j in range(m):
                    if keys[j] >= wlo and keys[j] <= whi:
                        if c < cap:
                            cand_keys[g, i, c] = keys[j]
                        c += 1
                cand_count[g, i] = c


@njit(parallel=True, cache=True)
def select_candidates(ks, numel, above, cand_keys, cand_count):
    """The exact k-th largest key per model from a windowed pass (see trim_scan / ties_window).

    Returns (ok, threshold (n,), quota (GROUPS, n)); ok is False when some threshold lies outside
    its window or a candidate buffer overflowed (the caller then runs the radix passes). quota[g, i]
    is how many keys equal to the threshold group g keeps: the groups in index order, so the lowest
    flat indices win. The models are selected in parallel.
    """
    n = above.shape[1]
    threshold = np.zeros(n, np.uint32)
    quota = np.full((GROUPS, n), np.iinfo(np.int64).max, np.int64)
    ok = np.zeros(n, np.uint8)
    for i in prange(n):
        ok[i] = _select_one(ks[i], numel, above[:, i], cand_keys[:, i], cand_count[:, i],
                            threshold[i:i + 1], quota[:, i])
    return ok.all(), threshold, quota


@njit(inline="always")
def _select_one(k, numel, above, cand_keys, cand_count, threshold, quota):
    """select_candidates for one model (above, cand_count: (GROUPS,); cand_keys: (GROUPS, cap))."""
    cap = cand_keys.shape[1]
    for g in range(GROUPS):
        if cand_count[g] > cap:
            return False
    if k <= 0 or k >= numel:
        return False
    total = 0
    beyond = 0
    for g in range(GROUPS):
        total += cand_count[g]
        beyond += above[g]
    rank = k - beyond  # the threshold is the rank-th largest candidate
    if rank <= 0 or rank > total:
        return False
    pool = _pool(cand_keys, cand_count)
    t = np.partition(pool, total - rank)[total - rank]
    greater = 0
    for v in pool:
        greater += v > t
    _equal_quota(cand_keys, cand_count, t, rank - greater, quota)
    threshold[0] = t
    return True


@njit(inline="always")
def _pool(keys, counts):
    """The first counts[g] keys of each group g, concatenated in group order."""
    total = 0
    for g in range(GROUPS):
        total += counts[g]
    pool = np.empty(total, np.uint32)
    at = 0
    for g in range(GROUPS):
        c = counts[g]
        pool[at : at + c] = keys[g, :c]
        at += c
    return pool


@njit(inline="always")
def _equal_quota(keys, counts, t, need, quota):
    """Split the `need` keys equal to t still to take over the groups, in index order (the lowest
    flat indices win)."""
    before = 0
    for g in range(GROUPS):
        equal = 0
        for q in range(counts[g]):
            equal += keys[g, q] == t
        quota[g] = min(max(need - before, 0), equal)
        before += equal


@njit(cache=True)
def sample_keys(base, xs, kind, stride, count, arith):
    """|x_i - base| bit patterns at one index in each stride-long stretch (count of them) for each
    model. The index within a stretch is jittered, so a stride that divides the row length does not
    sample the same few columns of every row (weight deltas can differ by column)."""
    n_models = xs.shape[0]
    keys = np.empty((n_models, count), np.uint32)
    for i in range(n_models):
        for s in range(count):
            jitter = np.int64((np.uint64(s) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40))
            j = s * stride + jitter % stride
            keys[i, s] = f32_bits(abs(rnd(np.float32(load(xs, i, j, kind) - load(base, 0, j, kind)), arith)))
    return keys


# --- TIES family ----------------------------------------------------------------------------------


@njit(inline="always")
def _ties(base, xs, kind, trim, mix, sv, dst, arith):
    """TIES (and TIES-SV, DARE-TIES, DARE-linear) over one tensor.

    Per element: trim (magnitude: keep/threshold/quota from the selection passes; random: DARE with a
    counter-based draw), u_i = w_i * trimmed_i, elected sign = sign of sum_i u_i (or of the unweighted
    trimmed values; vote < 0: no election), mean of the agreeing u_i over the agreeing weights (or
    their count).

    The parameters travel in four tuples (methods.ties_family builds them):
      trim = (sparsify, keep_all, threshold, quota, density, seeds)
      mix  = (weights, vote, normalize, lam)
      sv   = (protect, mode, bucket, threshold, quota, hist, collect)
      dst  = (out, out_kind, stats)

    TIES-SV (protect >= 0): the protected model's entries that survive the trim but disagree with the
    elected sign are candidates; key = orderable(|sum agreeing u| - |u_p|). mode HIST_HIGH /
    HIST_LOW / COUNT_EQUAL fill hist for the radix select of the smallest keys (no output); mode -1
    merges, and candidates with key < threshold (or equal, within quota) are reserved: their elected
    sign becomes sign(u_p). mode SV_COLLECT merges reserving nothing and stores each candidate in
    collect = (keys, offsets in the group, keep bits of the models, counts), per group in index
    order (counts run past the capacity, to tell an overflow); ties_sv_reserve then re-merges the
    reserved ones.

    arith: the dtype each step is rounded to, as in task_arithmetic (weights come pre-rounded).

    The work runs in blocks of BLOCK elements, one simple loop per step, so that the compiler can
    vectorise the steps; only the rare sequential decisions (ties at a threshold) loop element-wise.
    stats[g, i] = (kept, discarded, reserved). Returns an index holding a non-finite result, or -1.
    """
    # numba's parallel loop takes arrays and scalars only: the tuples are unpacked before it and
    # rebuilt inside it
    sparsify, keep_all, threshold, quota, density, seeds = trim
    weights, vote, normalize, lam = mix
    protect, sv_mode, sv_bucket, sv_threshold, sv_quota, sv_hist, sv_collect = sv
    sv_keys, sv_offsets, sv_keep, sv_count = sv_collect
    out, out_kind, stats = dst
    n_models, n = xs.shape
    bad = np.full(GROUPS, -1, np.int64)
    unweighted = vote == VOTE_UNWEIGHTED
    for g in prange(GROUPS):
        trim_g = (sparsify, keep_all, threshold, quota, density, seeds)
        mix_g = (weights, vote, normalize, lam)
        sv_g = (protect, sv_mode, sv_bucket, sv_threshold, sv_quota, sv_hist,
                (sv_keys, sv_offsets, sv_keep, sv_count))
        dst_g = (out, out_kind, stats)
        bb = np.empty(BLOCK, np.float32)
        tr = np.empty((n_models, BLOCK), np.float32)  # trimmed task vectors
        u = np.empty((n_models, BLOCK), np.float32)  # weighted
        keep = np.empty((n_models, BLOCK), np.uint8)  # flags as uint8: bool arrays vectorise worse
        agree = np.empty((n_models, BLOCK), np.uint8)
        vote_sum = np.empty(BLOCK, np.float32)
        positive = np.empty(BLOCK, np.uint8)
        mixed = np.empty(BLOCK, np.float32)
        divisor = np.empty(BLOCK, np.float32)
        slab = np.int64(g) if sv_mode == COUNT_EQUAL else np.int64(get_thread_id())
        lo, hi = _group_range(g, n)
        used = np.zeros(n_models, np.int64)
        sv_used = np.zeros(1, np.int64)
        for start in range(lo, hi, BLOCK):
            m = min(BLOCK, hi - start)
            for j in range(m):
                bb[j] = load(base, 0, start + j, kind)
            for i in range(n_models):
                _trim_model(xs, kind, bb, trim_g, i, g, start, m, used, tr, keep, arith)
                wi = weights[i]
                for j in range(m):
                    u[i, j] = rnd(np.float32(tr[i, j] * wi), arith)
            # sign election over the models, summed in model order
            for i in range(n_models):
                for j in range(m):
                    c = tr[i, j] if unweighted else u[i, j]
                    vote_sum[j] = c if i == 0 else np.float32(vote_sum[j] + c)
            for j in range(m):
                positive[j] = vote_sum[j] >= 0
            _agree_and_mix(tr, u, weights, vote, positive, agree, mixed, divisor, m)
            if protect >= 0 and (sv_mode >= 0 or sv_threshold > 0):
                _slack_block(tr, u, keep, agree, mixed, divisor, weights, vote, sv_g, g, slab, lo,
                             start, m, sv_used, stats)
            if sv_mode >= 0 and sv_mode != SV_COLLECT:
                continue  # a counting pass: no output
            _tally_and_store(keep, agree, mixed, divisor, bb, mix_g, dst_g, g, start, m, bad, arith)
    return bad.max()


@njit(inline="always")
def _trim_model(xs, kind, bb, trim, i, g, start, m, used, tr, keep, arith):
    """Model i's task vector over one block, trimmed: tr[i] and keep[i]."""
    sparsify, keep_all, threshold, quota, density, seeds = trim
    for j in range(m):
        tr[i, j] = rnd(np.float32(load(xs, i, start + j, kind) - bb[j]), arith)
    if sparsify == SPARSIFY_MAGNITUDE and not keep_all[i]:
        thr = threshold[i]
        ties_left = 0
        for j in range(m):
            key = f32_bits(abs(tr[i, j]))
            keep[i, j] = key > thr
            ties_left += key == thr
        if ties_left:  # lowest flat indices first, up to this group's quota
            for j in range(m):
                if f32_bits(abs(tr[i, j])) == thr and used[i] < quota[g, i]:
                    keep[i, j] = True
                    used[i] += 1
        for j in range(m):
            # a trimmed entry stays a signed zero, as mergekit's tau * mask
            tr[i, j] = tr[i, j] if keep[i, j] else np.float32(tr[i, j] * np.float32(0))
    elif sparsify == SPARSIFY_RANDOM and not keep_all[i]:
        scale = np.float32(density[i])
        for j in range(m):
            k = _random_unit(seeds[i], i, start + j) < density[i]
            keep[i, j] = k
            tr[i, j] = rnd(np.float32(tr[i, j] / scale), arith) if k else np.float32(tr[i, j] * np.float32(0))
    else:
        for j in range(m):
            keep[i, j] = True


@njit(inline="always")
def _slack_block(tr, u, keep, agree, mixed, divisor, weights, vote, sv, g, slab, lo, start, m,
                 sv_used, stats):
    """TIES-SV over one block: count, collect or reserve the protected model's candidates."""
    p, sv_mode, sv_bucket, sv_threshold, sv_quota, sv_hist, sv_collect = sv
    sv_keys, sv_offsets, sv_keep, sv_count = sv_collect
    n_models = tr.shape[0]
    unweighted = vote == VOTE_UNWEIGHTED
    for j in range(m):
        if not keep[p, j] or agree[p, j] or u[p, j] == 0:
            continue
        key = _orderable(np.float32(abs(mixed[j]) - abs(u[p, j])))
        if sv_mode == HIST_HIGH:
            sv_hist[slab, 0, key >> np.uint32(16)] += 1
        elif sv_mode == HIST_LOW:
            if (key >> np.uint32(16)) == sv_bucket:
                sv_hist[slab, 0, key & np.uint32(0xFFFF)] += 1
        elif sv_mode == COUNT_EQUAL:
            if key == sv_threshold:
                sv_hist[slab, 0, 0] += 1
        elif sv_mode == SV_COLLECT:
            c = sv_count[g]
            if c < sv_keys.shape[1]:
                sv_keys[g, c] = key
                sv_offsets[g, c] = np.uint32(start + j - lo)
                bits = np.uint8(0)
                for i in range(n_models):
                    bits |= np.uint8(keep[i, j] << i)
                sv_keep[g, c] = bits
            sv_count[g] = c + 1
        else:
            reserve = key < sv_threshold
            if not reserve and key == sv_threshold and sv_used[0] < sv_quota[g]:
                sv_used[0] += 1
                reserve = True
            if reserve:
                # the protected model's sign wins here
                _remix_one(tr, u, weights, vote, (tr[p, j] if unweighted else u[p, j]) > 0,
                           agree, mixed, divisor, j)
                stats[g, p, 2] += 1


@njit(inline="always")
def _tally_and_store(keep, agree, mixed, divisor, bb, mix, dst, g, start, m, bad, arith):
    """Count kept and discarded entries, finish the block's results and store them."""
    weights, vote, normalize, lam = mix
    out, out_kind, stats = dst
    for i in range(keep.shape[0]):
        kept_count = 0
        discarded = 0
        for j in range(m):
            kept_count += keep[i, j]
            discarded += keep[i, j] & (not agree[i, j])
        stats[g, i, 0] += kept_count
        stats[g, i, 1] += discarded
    for j in range(m):
        mixed[j] = _finish(mixed[j], divisor[j], bb[j], normalize, lam, vote, arith)
    for j in range(m):
        store(out, start + j, mixed[j], out_kind)
    for j in range(m):
        if not np.isfinite(mixed[j]) and bad[g] < 0:
            bad[g] = start + j


@njit(inline="always")
def _finish(mixed, divisor, b, normalize, lam, vote, arith):
    """base + lambda * (sum of agreeing u / their weight), each step rounded to `arith`."""
    mix = rnd(mixed, arith)
    if normalize:
        d = rnd(divisor, arith)
        if d == 0 or (vote < 0 and abs(d) < 1e-8):
            d = np.float32(1)
        mix = rnd(np.float32(mix / d), arith)
    if lam != 1:
        mix = rnd(np.float32(mix * lam), arith)
    return rnd(np.float32(b + mix), arith)


@njit(parallel=True, cache=True)
def ties_window(base, xs, kind, mix, window, dst, unsure_buffers):
    """TIES in one pass, before the exact trim threshold is known (float32 arithmetic, a weighted
    or unweighted vote).

    mix = (weights, vote, normalize, lam); window = (lo, hi, above, cand_keys, cand_count);
    dst = (out, out_kind, stats); unsure_buffers = (unsure, unsure_count).

    Each model's threshold is expected inside [lo[i], hi[i]] (from a sample): keys beyond the window
    are kept, keys below it trimmed, and an element with any key inside some window is "unsure":
    its index goes to unsure[g, :] and its in-window keys to cand_keys[g, i, :] (as in trim_scan,
    with above[g, i] counting the keys beyond). Every other element is merged and counted in stats
    for good; ties_fixup later merges the unsure ones once the candidates have given the exact
    thresholds. Counts run past the capacities, to tell an overflow.

    The steps are simple loops over a block (flags as uint8, 1-D row views) so that they
    vectorise; only the few unsure elements take the scalar loop at the end of each block.
    """
    # numba's parallel loop takes arrays and scalars only: the tuples are unpacked before it
    weights, vote, normalize, lam = mix
    window_lo, window_hi, above, cand_keys, cand_count = window
    out, out_kind, stats = dst
    unsure, unsure_count = unsure_buffers
    n_models, n = xs.shape
    bad = np.full(GROUPS, -1, np.int64)
    for g in prange(GROUPS):
        bb = np.empty(BLOCK, np.float32)
        keys = np.empty((n_models, BLOCK), np.uint32)
        tr = np.empty((n_models, BLOCK), np.float32)
        u = np.empty((n_models, BLOCK), np.float32)
        keep = np.empty((n_models, BLOCK), np.uint8)
        agree = np.empty((n_models, BLOCK), np.uint8)
        sure = np.empty(BLOCK, np.uint8)
        vote_sum = np.empty(BLOCK, np.float32)
        mixed = np.empty(BLOCK, np.float32)
        divisor = np.empty(BLOCK, np.float32)
        lo, hi = _group_range(g, n)
        for start in range(lo, hi, BLOCK):
            m = min(BLOCK, hi - start)
            for j in range(m):
                bb[j] = load(base, 0, start + j, kind)
                sure[j] = True
            for i in range(n_models):
                beyond = _window_trim(xs, kind, bb, i, start, m, window_lo[i], window_hi[i],
                                      weights[i], tr[i], u[i], keep[i], keys[i], sure)
                above[g, i] += beyond
                stats[g, i, 0] += beyond  # the unsure ones are taken back below
            _vote_and_mix(tr, u, keep, weights, vote, vote_sum, agree, mixed, divisor, m, stats, g)
            for j in range(m):
                mixed[j] = _finish(mixed[j], divisor[j], bb[j], normalize, lam, vote, KIND_F32)
            for j in range(m):
                store(out, start + j, mixed[j], out_kind)
            unsure_count[g] = _set_aside_unsure(keys, keep, agree, sure, window_lo, window_hi,
                                                start, m, g, unsure_count[g], unsure, cand_keys,
                                                cand_count, stats)
            if bad[g] < 0:
                bad[g] = _first_sure_nonfinite(mixed, sure, start, m)
    return bad.max()


@njit(inline="always")
def _window_trim(xs, kind, bb, i, start, m, wlo, whi, wi, tri, ui, keepi, keysi, sure):
    """Model i over one block: keys beyond its window kept, the rest trimmed, an element with a
    key inside the window marked unsure. Returns how many were beyond."""
    beyond = 0
    for j in range(m):
        t = np.float32(load(xs, i, start + j, kind) - bb[j])
        key = f32_bits(abs(t))
        keysi[j] = key
        k = key > whi
        keepi[j] = k
        beyond += k
        sure[j] = sure[j] & ((key < wlo) | k)
        # a trimmed entry stays a signed zero, as mergekit's tau * mask
        t = t if k else np.float32(t * np.float32(0))
        tri[j] = t
        ui[j] = np.float32(t * wi)
    return beyond


@njit(inline="always")
def _vote_and_mix(tr, u, keep, weights, vote, vote_sum, agree, mixed, divisor, m, stats, g):
    """Sign election summed in model order, agreement, and the sums of agreeing u and weights
    (mergekit's order), counting each model's discarded entries."""
    n_models = tr.shape[0]
    unweighted = vote == VOTE_UNWEIGHTED
    for i in range(n_models):
        src = tr[i] if unweighted else u[i]
        if i == 0:
            for j in range(m):
                vote_sum[j] = src[j]
        else:
            for j in range(m):
                vote_sum[j] = np.float32(vote_sum[j] + src[j])
    for i in range(n_models):
        wi = weights[i]
        d_agree = np.float32(1) if unweighted else wi
        d_not = np.float32(0) if unweighted else np.float32(wi * np.float32(0))
        src = tr[i] if unweighted else u[i]
        ui, agreei, keepi = u[i], agree[i], keep[i]
        discarded = 0
        for j in range(m):
            a = (src[j] > 0) if vote_sum[j] >= 0 else (src[j] < 0)
            agreei[j] = a
            discarded += keepi[j] & (not a)
            c = ui[j] if a else np.float32(ui[j] * np.float32(0))
            d = d_agree if a else d_not
            mixed[j] = c if i == 0 else np.float32(mixed[j] + c)
            divisor[j] = d if i == 0 else np.float32(divisor[j] + d)
        stats[g, i, 1] += discarded


@njit(inline="always")
def _set_aside_unsure(keys, keep, agree, sure, window_lo, window_hi, start, m, g, uc, unsure,
                      cand_keys, cand_count, stats):
    """The block's unsure elements: their indices and in-window keys stored for ties_fixup, their
    counts taken back. Returns the group's new unsure count."""
    cap = cand_keys.shape[2]
    ucap = unsure.shape[1]
    unsure_g = unsure[g]
    for j in range(m):
        if sure[j]:
            continue
        if uc < ucap:
            unsure_g[np.uint64(uc)] = start + j
        uc += 1
        for i in range(keys.shape[0]):
            stats[g, i, 0] -= keep[i, j]
            stats[g, i, 1] -= keep[i, j] & (not agree[i, j])
            key = keys[i, j]
            if key >= window_lo[i] and key <= window_hi[i]:
                c = cand_count[g, i]
                if c < cap:
                    cand_keys[g, i, c] = key
                cand_count[g, i] = c + 1
    return uc


@njit(inline="always")
def _first_sure_nonfinite(mixed, sure, start, m):
    """The first index of the block whose (sure) result is not finite, or -1."""
    nonfinite = False
    for j in range(m):
        nonfinite |= not np.isfinite(mixed[j])
    if nonfinite:
        for j in range(m):
            if sure[j] and not np.isfinite(mixed[j]):
                return start + j
    return -1


@njit(parallel=True, cache=True)
def ties_fixup(base, xs, kind, weights, threshold, quota, vote, normalize, lam, out, out_kind, stats,
               unsure, unsure_count):
    """Merge the elements ties_window left unsure, now that the thresholds are exact: in index order
    within each group, so that ties at a threshold go to the lowest indices, as everywhere else."""
    n_models, n = xs.shape
    bad = np.full(GROUPS, -1, np.int64)
    unweighted = vote == VOTE_UNWEIGHTED
    for g in prange(GROUPS):
        used = np.zeros(n_models, np.int64)
        tr = np.empty((n_models, 1), np.float32)
        u = np.empty((n_models, 1), np.float32)
        agree = np.empty((n_models, 1), np.bool_)
        mixed = np.empty(1, np.float32)
        divisor = np.empty(1, np.float32)
        kept = np.empty(n_models, np.bool_)
        for q in range(unsure_count[g]):
            j = unsure[g, q]
            b = load(base, 0, j, kind)
            vote_sum = np.float32(0)
            for i in range(n_models):
                t = np.float32(load(xs, i, j, kind) - b)
                key = f32_bits(abs(t))
                k = key > threshold[i]
                if not k and key == threshold[i] and used[i] < quota[g, i]:
                    used[i] += 1
                    k = True
                kept[i] = k
                tr[i, 0] = t if k else np.float32(t * np.float32(0))
                u[i, 0] = np.float32(tr[i, 0] * weights[i])
                c = tr[i, 0] if unweighted else u[i, 0]
                vote_sum = c if i == 0 else np.float32(vote_sum + c)
            _remix_one(tr, u, weights, vote, vote_sum >= 0, agree, mixed, divisor, 0)
            for i in range(n_models):
                stats[g, i, 0] += kept[i]
                stats[g, i, 1] += kept[i] and not agree[i, 0]
            res = _finish(mixed[0], divisor[0], b, normalize, lam, vote, KIND_F32)
            store(out, j, res, out_kind)
            if not np.isfinite(res) and bad[g] < 0:
                bad[g] = j
    return bad.max()


@njit(inline="always")
def _agree_and_mix(tr, u, weights, vote, positive, agree, mixed, divisor, m):
    """Agreement with the elected sign, and the sums of agreeing u and weights (mergekit's order)."""
    n_models = u.shape[0]
    unweighted = vote == VOTE_UNWEIGHTED
    for i in range(n_models):
        wi = weights[i]
        d_agree = np.float32(1) if unweighted else wi
        d_not = np.float32(0) if unweighted else np.float32(wi * np.float32(0))
        for j in range(m):
            s = tr[i, j] if unweighted else u[i, j]
            a = vote < 0 or ((s > 0) if positive[j] else (s < 0))
            agree[i, j] = a
            c = u[i, j] if a else np.float32(u[i, j] * np.float32(0))
            d = d_agree if a else d_not
            mixed[j] = c if i == 0 else np.float32(mixed[j] + c)
            divisor[j] = d if i == 0 else np.float32(divisor[j] + d)


@njit(inline="always")
def _remix_one(tr, u, weights, vote, positive, agree, mixed, divisor, j):
    """_agree_and_mix for one element, with the elected sign given."""
    n_models = u.shape[0]
    unweighted = vote == VOTE_UNWEIGHTED
    for i in range(n_models):
        s = tr[i, j] if unweighted else u[i, j]
        a = (s > 0) if positive else (s < 0)
        agree[i, j] = a
        c = u[i, j] if a else np.float32(u[i, j] * np.float32(0))
        if unweighted:
            d = np.float32(1) if a else np.float32(0)
        else:
            d = weights[i] if a else np.float32(weights[i] * np.float32(0))
        mixed[j] = c if i == 0 else np.float32(mixed[j] + c)
        divisor[j] = d if i == 0 else np.float32(divisor[j] + d)


@njit(cache=True)
def select_smallest(sv_keys, sv_count, m):
    """The m smallest collected TIES-SV candidate keys (1 <= m <= their count): the threshold key,
    and per group how many keys equal to it are taken (groups in index order: lowest index first)."""
    pool = _pool(sv_keys, sv_count)
    t = np.partition(pool, m - 1)[m - 1]
    less = 0
    for v in pool:
        less += v < t
    quota = np.zeros(GROUPS, np.int64)
    _equal_quota(sv_keys, sv_count, t, m - less, quota)
    return t, quota


@njit(inline="always")
def _ties_sv_reserve(base, xs, kind, weights, vote, normalize, lam, protect, sv_collect,
                     sv_threshold, sv_quota, out, out_kind, stats, arith):
    """Re-merge the TIES-SV candidates that the slack reserves (key < sv_threshold, or equal within
    sv_quota, in index order) with the protected model's sign, after an SV_COLLECT pass of _ties:
    each step as _ties computes it, the stats moved from the elected to the protected sign."""
    n_models, n = xs.shape
    sv_keys, sv_offsets, sv_keep, sv_count = sv_collect
    unweighted = vote == VOTE_UNWEIGHTED
    p = protect
    bad = np.full(GROUPS, -1, np.int64)
    for g in prange(GROUPS):
        tr = np.empty((n_models, 1), np.float32)
        u = np.empty((n_models, 1), np.float32)
        agree = np.empty((n_models, 1), np.uint8)
        mixed = np.empty(1, np.float32)
        divisor = np.empty(1, np.float32)
        lo, _ = _group_range(g, n)
        used = 0
        for q in range(sv_count[g]):
            key = sv_keys[g, q]
            reserve = key < sv_threshold
            if not reserve and key == sv_threshold and used < sv_quota[g]:
                used += 1
                reserve = True
            if not reserve:
                continue
            j = lo + np.int64(sv_offsets[g, q])
            b = load(base, 0, j, kind)
            vote_sum = np.float32(0)
            for i in range(n_models):
                t = rnd(np.float32(load(xs, i, j, kind) - b), arith)
                tr[i, 0] = t if (sv_keep[g, q] >> i) & 1 else np.float32(t * np.float32(0))
                u[i, 0] = rnd(np.float32(tr[i, 0] * weights[i]), arith)
                c = tr[i, 0] if unweighted else u[i, 0]
                vote_sum = c if i == 0 else np.float32(vote_sum + c)
            elected = vote_sum >= 0
            for i in range(n_models):  # the entries discarded under the elected sign
                s = tr[i, 0] if unweighted else u[i, 0]
                kept = (sv_keep[g, q] >> i) & 1
                stats[g, i, 1] -= kept & (not ((s > 0) if elected else (s < 0)))
            _remix_one(tr, u, weights, vote, (tr[p, 0] if unweighted else u[p, 0]) > 0, agree,
                       mixed, divisor, 0)
            for i in range(n_models):
                stats[g, i, 1] += ((sv_keep[g, q] >> i) & 1) & (not agree[i, 0])
            stats[g, p, 2] += 1
            res = _finish(mixed[0], divisor[0], b, normalize, lam, vote, arith)
            store(out, j, res, out_kind)
            if not np.isfinite(res) and bad[g] < 0:
                bad[g] = j
    return bad.max()


# --- entry points: one compiled kernel per arithmetic dtype -----------------------------------------
# `arith` is a compile-time constant in each, so the rounding steps fold away and the step loops
# vectorise (a run-time `arith` costs about a third of the TIES kernel's time).

@njit(parallel=True, cache=True)
def ties_f32(base, xs, kind, trim, mix, sv, dst):
    return _ties(base, xs, kind, trim, mix, sv, dst, KIND_F32)


@njit(parallel=True, cache=True)
def ties_sv_reserve_f32(base, xs, kind, weights, vote, normalize, lam, protect, sv_collect, sv_threshold, sv_quota, out, out_kind, stats):
    return _ties_sv_reserve(base, xs, kind, weights, vote, normalize, lam, protect, sv_collect, sv_threshold, sv_quota, out, out_kind, stats, KIND_F32)


@njit(parallel=True, cache=True)
def trim_scan_f32(base, xs, kind, window_lo, window_hi, above, cand_keys, cand_count):
    return _trim_scan(base, xs, kind, window_lo, window_hi, above, cand_keys, cand_count, KIND_F32)


@njit(parallel=True, cache=True)
def task_arithmetic_f32(base, xs, kind, weights, normalize, lam, out, out_kind):
    return _task_arithmetic(base, xs, kind, weights, normalize, lam, KIND_F32, out, out_kind)

@njit(parallel=True, cache=True)
def ties_bf16(base, xs, kind, trim, mix, sv, dst):
    return _ties(base, xs, kind, trim, mix, sv, dst, KIND_BF16)


@njit(parallel=True, cache=True)
def ties_sv_reserve_bf16(base, xs, kind, weights, vote, normalize, lam, protect, sv_collect, sv_threshold, sv_quota, out, out_kind, stats):
    return _ties_sv_reserve(base, xs, kind, weights, vote, normalize, lam, protect, sv_collect, sv_threshold, sv_quota, out, out_kind, stats, KIND_BF16)


@njit(parallel=True, cache=True)
def trim_scan_bf16(base, xs, kind, window_lo, window_hi, above, cand_keys, cand_count):
    return _trim_scan(base, xs, kind, window_lo, window_hi, above, cand_keys, cand_count, KIND_BF16)


@njit(parallel=True, cache=True)
def task_arithmetic_bf16(base, xs, kind, weights, normalize, lam, out, out_kind):
    return _task_arithmetic(base, xs, kind, weights, normalize, lam, KIND_BF16, out, out_kind)

@njit(parallel=True, cache=True)
def ties_f16(base, xs, kind, trim, mix, sv, dst):
    return _ties(base, xs, kind, trim, mix, sv, dst, KIND_F16)


@njit(parallel=True, cache=True)
def ties_sv_reserve_f16(base, xs, kind, weights, vote, normalize, lam, protect, sv_collect, sv_threshold, sv_quota, out, out_kind, stats):
    return _ties_sv_reserve(base, xs, kind, weights, vote, normalize, lam, protect, sv_collect, sv_threshold, sv_quota, out, out_kind, stats, KIND_F16)


@njit(parallel=True, cache=True)
def trim_scan_f16(base, xs, kind, window_lo, window_hi, above, cand_keys, cand_count):
    return _trim_scan(base, xs, kind, window_lo, window_hi, above, cand_keys, cand_count, KIND_F16)


@njit(parallel=True, cache=True)
def task_arithmetic_f16(base, xs, kind, weights, normalize, lam, out, out_kind):
    return _task_arithmetic(base, xs, kind, weights, normalize, lam, KIND_F16, out, out_kind)


TIES = {KIND_F32: ties_f32, KIND_BF16: ties_bf16, KIND_F16: ties_f16}
TIES_SV_RESERVE = {KIND_F32: ties_sv_reserve_f32, KIND_BF16: ties_sv_reserve_bf16,
                   KIND_F16: ties_sv_reserve_f16}
TRIM_SCAN = {KIND_F32: trim_scan_f32, KIND_BF16: trim_scan_bf16, KIND_F16: trim_scan_f16}
TASK_ARITHMETIC = {KIND_F32: task_arithmetic_f32, KIND_BF16: task_arithmetic_bf16,
                   KIND_F16: task_arithmetic_f16}
