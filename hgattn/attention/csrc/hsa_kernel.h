/* The HSA dynamic programme (spec sections 4-5) for one floating type: included by hsa_native.c once per type
 * with REAL (the type), SUFFIX (the name suffix) and EXP, LOG, LOG1P, FABS (its math functions) defined.
 *
 * Nodes are addressed by slot (level order, the children of a node contiguous). Vectors of a leaf are rows of
 * the inputs (q, k, v, out, gradients: [N, H, d], by leaf row); those of an inner node rows of the inner
 * arrays ([K, H, d], by inner row); scalars per head are [T, H] by slot. */

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(name, SUFFIX)

static inline REAL FN(dot)(const REAL *x, const REAL *y, i64 n) {
    REAL acc = 0;
#pragma omp simd reduction(+ : acc)
    for (i64 i = 0; i < n; ++i) acc += x[i] * y[i];
    return acc;
}

static inline void FN(axpy)(REAL *y, REAL alpha, const REAL *x, i64 n) {
#pragma omp simd
    for (i64 i = 0; i < n; ++i) y[i] += alpha * x[i];
}

static inline REAL FN(logaddexp)(REAL x, REAL y) {
    REAL top = x > y ? x : y;
    return top + LOG1P(EXP(-FABS(x - y)));
}

/* The row of slot s: a leaf's in `leaf`, an inner node's in `inner`. */
static inline REAL *FN(row)(const Tree *t, const REAL *leaf, const REAL *inner, i64 s, i64 width) {
    i64 r = t->leaf_row[s];
    return (REAL *)(r >= 0 ? leaf + r * width : inner + t->inner_row[s] * width);
}

/* <pos(B), pos(S)> for head h (0 without positions). */
static inline REAL FN(pos_term)(const Tree *t, const REAL *pos, i64 b, i64 s, i64 h) {
    if (!pos) return 0;
    i64 hp = t->pos_heads == 1 ? 0 : h, width = t->pos_heads * t->pos_dim;
    return FN(dot)(pos + b * width + hp * t->pos_dim, pos + s * width + hp * t->pos_dim, t->pos_dim);
}

/* Logits of child bi of the family starting at slot c0 (F children) against its siblings, head h, into buf;
 * returns their maximum. */
static REAL FN(family_logits)(const Tree *t, const REAL *q, const REAL *k, const REAL *rq, const REAL *rk,
                              const REAL *pos, REAL scale, i64 c0, i64 F, i64 bi, i64 h, REAL *buf) {
    const i64 D = t->dim, HD = t->heads * t->dim;
    const REAL *qb = FN(row)(t, q, rq, c0 + bi, HD) + h * D;
    REAL top = -INFINITY;
    for (i64 si = 0; si < F; ++si) {
        if (si == bi) continue;
        i64 s = c0 + si;
        REAL l = scale * FN(dot)(qb, FN(row)(t, k, rk, s, HD) + h * D, D) + FN(pos_term)(t, pos, c0 + bi, s, h)
                 + (REAL)t->log_count[s];
        buf[si] = l;
        if (l > top) top = l;
    }
    return top;
}

/* The per-pair values (W and GV: [pairs, H]) of slot s against its siblings, head h: entry si * H is the pair
 * (s, the si-th child of s's parent); the pairs of the family of A start at pair_ptr[A]. */
static inline REAL *FN(pair_row)(const Tree *t, const REAL *pairs, i64 s, i64 h) {
    const i64 p = t->parent[s], c0 = t->child_start[p];
    return (REAL *)pairs + (t->pair_ptr[p] + (s - c0) * t->child_count[p]) * t->heads + h;
}

/* d += gain * theta(s) for head h, theta(s) = sum_S W(s, S) rv(S) over the siblings S of slot s. */
static void FN(add_summary)(const Tree *t, const REAL *v, const REAL *rv, const REAL *W, i64 s, i64 h, REAL gain,
                            REAL *d) {
    const i64 p = t->parent[s], c0 = t->child_start[p], F = t->child_count[p], H = t->heads, DV = t->vdim;
    const REAL *w = FN(pair_row)(t, W, s, h);
    for (i64 si = 0; si < F; ++si)
        if (c0 + si != s) FN(axpy)(d, gain * w[si * H], FN(row)(t, v, rv, c0 + si, H * DV) + h * DV, DV);
}

/* <g, theta(s)> for head h (g: DV values), keeping each pair's <g, rv(S)> in GV for the backward family pass. */
static REAL FN(summary_dot)(const Tree *t, const REAL *v, const REAL *rv, const REAL *W, i64 s, i64 h,
                            const REAL *g, REAL *GV) {
    const i64 p = t->parent[s], c0 = t->child_start[p], F = t->child_count[p], H = t->heads, DV = t->vdim;
    const REAL *w = FN(pair_row)(t, W, s, h);
    REAL *gv = FN(pair_row)(t, GV, s, h), acc = 0;
    for (i64 si = 0; si < F; ++si) {
        if (c0 + si == s) continue;
        gv[si * H] = FN(dot)(g, FN(row)(t, v, rv, c0 + si, H * DV) + h * DV, DV);
        acc += w[si * H] * gv[si * H];
    }
    return acc;
}

static inline int FN(has_sibling)(const Tree *t, i64 s) {
    i64 p = t->parent[s];
    return p >= 0 && t->child_count[p] >= 2;
}

/* rq, rk, rv of inner slot s: the leaf-count-weighted mean of its children's. */
static void FN(mean_of_children)(const Tree *t, const REAL *leaf, const REAL *inner, REAL *dst, i64 s, i64 width) {
    for (i64 i = 0; i < width; ++i) dst[i] = 0;
    for (i64 c = t->child_start[s]; c < t->child_start[s] + t->child_count[s]; ++c)
        FN(axpy)(dst, (REAL)(t->count[c] / t->count[s]), FN(row)(t, leaf, inner, c, width), width);
}

/* Means rq, rk, rv of the inner nodes, bottom-up (inside a parallel region). */
static void FN(pass_means)(const Tree *t, const REAL *q, const REAL *k, const REAL *v, REAL *rq, REAL *rk, REAL *rv) {
    const i64 HD = t->heads * t->dim, HDV = t->heads * t->vdim;
    for (i64 lev = t->num_levels - 1; lev >= 0; --lev) {
#pragma omp for schedule(static)
        for (i64 s = t->level_ptr[lev]; s < t->level_ptr[lev + 1]; ++s) {
            if (t->leaf_row[s] >= 0) continue;
            i64 r = t->inner_row[s];
            FN(mean_of_children)(t, q, rq, rq + r * HD, s, HD);
            FN(mean_of_children)(t, k, rk, rk + r * HD, s, HD);
            FN(mean_of_children)(t, v, rv, rv + r * HDV, s, HDV);
        }
    }
}

/* Family attention: e(B) and the softmax weights W of every child of every family (W[pair, h], the pairs of
 * the family of A at pair_ptr[A] + bi * F + si; the summary theta(B) = sum_S W(B, S) rv(S) is never stored);
 * roots have no siblings (inside a parallel region; buf holds max_width values). */
static void FN(pass_family)(const Tree *t, const REAL *q, const REAL *k, const REAL *pos, REAL scale,
                            const REAL *rq, const REAL *rk, REAL *e, REAL *W, REAL *buf) {
    const i64 H = t->heads, T = t->num_slots;
#pragma omp for schedule(static)
    for (i64 s = t->level_ptr[0]; s < t->level_ptr[1]; ++s)
        for (i64 h = 0; h < H; ++h) e[s * H + h] = (REAL)NEG;
#pragma omp for schedule(dynamic, 16)
    for (i64 A = 0; A < T; ++A) {
        const i64 F = t->child_count[A], c0 = t->child_start[A];
        for (i64 bi = 0; bi < F; ++bi) {
            const i64 b = c0 + bi;
            for (i64 h = 0; h < H; ++h) {
                if (F < 2) { e[b * H + h] = (REAL)NEG; continue; }
                REAL top = FN(family_logits)(t, q, k, rq, rk, pos, scale, c0, F, bi, h, buf), total = 0;
                for (i64 si = 0; si < F; ++si) {
                    if (si == bi) continue;
                    buf[si] = EXP(buf[si] - top);
                    total += buf[si];
                }
                e[b * H + h] = top + LOG(total);
                REAL *w = FN(pair_row)(t, W, b, h);
                w[bi * H] = 0;
                for (i64 si = 0; si < F; ++si)
                    if (si != bi) w[si * H] = buf[si] / total;
            }
        }
    }
}

/* sum of x * 0 over n values (inside a parallel region): 0 when all are finite, NaN otherwise. */
static void FN(add_nonfinite)(const REAL *x, i64 n, REAL *flag) {
    const i64 threads = omp_get_num_threads(), id = omp_get_thread_num();
    REAL acc = 0;
#pragma omp simd reduction(+ : acc)
    for (i64 i = n * id / threads; i < n * (id + 1) / threads; ++i) acc += x[i] * 0;
#pragma omp atomic
    *flag += acc;
}

/* The forward pass; returns whether q, k, v, pos and the output are all finite. */
i64 FN(hsa_forward)(const Tree *t, const REAL *q, const REAL *k, const REAL *v, const REAL *pos, REAL scale,
                     REAL *out, REAL *rq, REAL *rk, REAL *rv, REAL *W, REAL *e, REAL *a, REAL *z,
                     REAL *u, REAL *y) {
    const i64 H = t->heads, D = t->dim, DV = t->vdim, HD = H * D, HDV = H * DV;
    REAL flag = 0;
#pragma omp parallel num_threads(t->threads)
    {
        REAL *buf = malloc(sizeof(REAL) * (t->max_width > 0 ? t->max_width : 1));
        FN(pass_means)(t, q, k, v, rq, rk, rv);
        FN(pass_family)(t, q, k, pos, scale, rq, rk, e, W, buf);
        /* 3. self masses a and partitions z, bottom-up */
        for (i64 lev = t->num_levels - 1; lev >= 0; --lev) {
#pragma omp for schedule(static)
            for (i64 s = t->level_ptr[lev]; s < t->level_ptr[lev + 1]; ++s) {
                const i64 r = t->leaf_row[s];
                for (i64 h = 0; h < H; ++h) {
                    REAL mass = 0;
                    if (r >= 0) {
                        mass = t->include_self
                                   ? scale * FN(dot)(q + r * HD + h * D, k + r * HD + h * D, D)
                                         + FN(pos_term)(t, pos, s, s, h)
                                   : (REAL)NEG;
                    } else {
                        for (i64 c = t->child_start[s]; c < t->child_start[s] + t->child_count[s]; ++c)
                            mass += (REAL)(t->count[c] / t->count[s]) * z[c * H + h];
                    }
                    a[s * H + h] = mass;
                    z[s * H + h] = FN(logaddexp)(mass, e[s * H + h]);
                }
            }
        }
        /* 4. reach u, gains and outputs, top-down: y(B) = y(parent) + gain(B) theta(B); a leaf's y is its output
         * (plus its kept value with include_self) */
        for (i64 lev = 0; lev < t->num_levels; ++lev) {
#pragma omp for schedule(static)
            for (i64 s = t->level_ptr[lev]; s < t->level_ptr[lev + 1]; ++s) {
                const i64 p = t->parent[s], r = t->leaf_row[s];
                const int sib = FN(has_sibling)(t, s);
                REAL *dst = r >= 0 ? out + r * HDV : y + t->inner_row[s] * HDV;
                const REAL *up = p >= 0 ? y + t->inner_row[p] * HDV : NULL;
                for (i64 h = 0; h < H; ++h) {
                    const i64 sh = s * H + h;
                    const REAL reach = p >= 0 ? u[p * H + h] + a[p * H + h] - z[p * H + h] : 0;
                    u[sh] = reach;
                    const REAL gain = sib ? EXP(reach + e[sh] - z[sh]) : 0;
                    REAL *d = dst + h * DV;
                    for (i64 i = 0; i < DV; ++i) d[i] = up ? up[h * DV + i] : 0;
                    if (sib) FN(add_summary)(t, v, rv, W, s, h, gain, d);
                    if (r >= 0 && t->include_self) FN(axpy)(d, EXP(reach + a[sh] - z[sh]), v + r * HDV + h * DV, DV);
                }
            }
        }
        FN(add_nonfinite)(q, t->num_leaves * HD, &flag);
        FN(add_nonfinite)(k, t->num_leaves * HD, &flag);
        FN(add_nonfinite)(v, t->num_leaves * HDV, &flag);
        FN(add_nonfinite)(out, t->num_leaves * HDV, &flag);
        if (pos) FN(add_nonfinite)(pos, t->num_slots * t->pos_heads * t->pos_dim, &flag);
        free(buf);
    }
    return flag == 0;
}

/* Gradients of q, k, v (and pos, in slot order) from the output gradient `gout`, with the forward pass's saved
 * state (rq, rk, rv, W and e computed again into the arrays given when `recompute` is set). Work arrays:
 * G [K, H, dv] (summed output gradient below an inner node), drq, drk [K, H, d], drv [K, H, dv], GV [pairs, H]
 * (<G(B), rv(S)> per sibling pair) and scalars [5, T, H]. */
void FN(hsa_backward)(const Tree *t, const REAL *q, const REAL *k, const REAL *v, const REAL *pos, REAL scale,
                      i64 recompute, REAL *rq, REAL *rk, REAL *rv, REAL *W, REAL *e, const REAL *a,
                      const REAL *z, const REAL *u, const REAL *gout, REAL *dq, REAL *dk, REAL *dv, REAL *dpos,
                      REAL *G, REAL *drq, REAL *drk, REAL *drv, REAL *GV, REAL *scalars) {
    const i64 H = t->heads, D = t->dim, DV = t->vdim, HD = H * D, HDV = H * DV, T = t->num_slots;
    const i64 N = t->num_leaves, K = t->num_inner, PW = t->pos_heads * t->pos_dim;
    REAL *du = scalars, *gain_term = scalars + T * H, *keep_term = scalars + 2 * T * H, *da = scalars + 3 * T * H;
    REAL *de = scalars + 4 * T * H;
#pragma omp parallel num_threads(t->threads)
    {
        REAL *buf = malloc(sizeof(REAL) * (t->max_width > 0 ? t->max_width : 1));
        if (recompute) {
            FN(pass_means)(t, q, k, v, rq, rk, rv);
            FN(pass_family)(t, q, k, pos, scale, rq, rk, e, W, buf);
        }
#pragma omp for schedule(static)
        for (i64 r = 0; r < N; ++r) {
            for (i64 i = 0; i < HD; ++i) dq[r * HD + i] = dk[r * HD + i] = 0;
            for (i64 i = 0; i < HDV; ++i) dv[r * HDV + i] = 0;
        }
#pragma omp for schedule(static)
        for (i64 r = 0; r < K; ++r) {
            for (i64 i = 0; i < HD; ++i) drq[r * HD + i] = drk[r * HD + i] = 0;
            for (i64 i = 0; i < HDV; ++i) drv[r * HDV + i] = 0;
        }
        if (dpos) {
#pragma omp for schedule(static)
            for (i64 i = 0; i < T * PW; ++i) dpos[i] = 0;
        }
        /* 1. bottom-up: summed output gradients G, the local gate terms, du = d loss / d u summed below */
        for (i64 lev = t->num_levels - 1; lev >= 0; --lev) {
#pragma omp for schedule(static)
            for (i64 s = t->level_ptr[lev]; s < t->level_ptr[lev + 1]; ++s) {
                const i64 r = t->leaf_row[s];
                const int sib = FN(has_sibling)(t, s);
                if (r < 0) {
                    REAL *g = G + t->inner_row[s] * HDV;
                    for (i64 i = 0; i < HDV; ++i) g[i] = 0;
                    for (i64 c = t->child_start[s]; c < t->child_start[s] + t->child_count[s]; ++c)
                        FN(axpy)(g, 1, FN(row)(t, gout, G, c, HDV), HDV);
                }
                const REAL *g = FN(row)(t, gout, G, s, HDV);
                for (i64 h = 0; h < H; ++h) {
                    const i64 sh = s * H + h;
                    REAL gt = 0, kt = 0, below = 0;
                    if (sib) gt = EXP(u[sh] + e[sh] - z[sh]) * FN(summary_dot)(t, v, rv, W, s, h, g + h * DV, GV);
                    if (r >= 0 && t->include_self) {
                        const REAL keep = EXP(u[sh] + a[sh] - z[sh]);
                        kt = keep * FN(dot)(g + h * DV, v + r * HDV + h * DV, DV);
                        FN(axpy)(dv + r * HDV + h * DV, keep, g + h * DV, DV);
                    }
                    for (i64 c = t->child_start[s]; c < t->child_start[s] + t->child_count[s]; ++c)
                        below += du[c * H + h];
                    gain_term[sh] = gt;
                    keep_term[sh] = kt;
                    du[sh] = gt + kt + below;
                }
            }
        }
        /* 2. top-down: da, de (z through the parent's a); a leaf's da is its self logit's gradient */
        for (i64 lev = 0; lev < t->num_levels; ++lev) {
#pragma omp for schedule(static)
            for (i64 s = t->level_ptr[lev]; s < t->level_ptr[lev + 1]; ++s) {
                const i64 p = t->parent[s], r = t->leaf_row[s];
                for (i64 h = 0; h < H; ++h) {
                    const i64 sh = s * H + h;
                    const REAL below = du[sh] - gain_term[sh] - keep_term[sh];
                    const REAL dz = -du[sh] + (p >= 0 ? (REAL)(t->count[s] / t->count[p]) * da[p * H + h] : 0);
                    da[sh] = below + keep_term[sh] + dz * EXP(a[sh] - z[sh]);
                    de[sh] = gain_term[sh] + dz * EXP(e[sh] - z[sh]);
                    if (r >= 0 && t->include_self) {
                        const REAL g = da[sh] * scale;
                        FN(axpy)(dq + r * HD + h * D, g, k + r * HD + h * D, D);
                        FN(axpy)(dk + r * HD + h * D, g, q + r * HD + h * D, D);
                        if (pos) {
                            const i64 hp = t->pos_heads == 1 ? 0 : h;
                            FN(axpy)(dpos + s * PW + hp * t->pos_dim, 2 * da[sh], pos + s * PW + hp * t->pos_dim,
                                     t->pos_dim);
                        }
                    }
                }
            }
        }
        /* 3. family attention backward, family by family (every write stays within the family) */
#pragma omp for schedule(dynamic, 16)
        for (i64 A = 0; A < T; ++A) {
            const i64 F = t->child_count[A], c0 = t->child_start[A];
            if (F < 2) continue;
            for (i64 bi = 0; bi < F; ++bi) {
                const i64 b = c0 + bi;
                const REAL *g = FN(row)(t, gout, G, b, HDV), *qb = FN(row)(t, q, rq, b, HD);
                REAL *dqb = FN(row)(t, dq, drq, b, HD);
                for (i64 h = 0; h < H; ++h) {
                    const i64 bh = b * H + h;
                    const REAL gain = EXP(u[bh] + e[bh] - z[bh]);
                    if (gain == 0 && de[bh] == 0) continue;
                    const REAL *wb = FN(pair_row)(t, W, b, h), *gvb = FN(pair_row)(t, GV, b, h);
                    for (i64 si = 0; si < F; ++si) {
                        if (si == bi) continue;
                        const i64 s = c0 + si;
                        const REAL w = wb[si * H];
                        const REAL dl = w * (gain * gvb[si * H] - gain_term[bh] + de[bh]);
                        FN(axpy)(dqb + h * D, scale * dl, FN(row)(t, k, rk, s, HD) + h * D, D);
                        FN(axpy)(FN(row)(t, dk, drk, s, HD) + h * D, scale * dl, qb + h * D, D);
                        FN(axpy)(FN(row)(t, dv, drv, s, HDV) + h * DV, w * gain, g + h * DV, DV);
                        if (pos) {
                            const i64 hp = t->pos_heads == 1 ? 0 : h, off = hp * t->pos_dim;
                            FN(axpy)(dpos + b * PW + off, dl, pos + s * PW + off, t->pos_dim);
                            FN(axpy)(dpos + s * PW + off, dl, pos + b * PW + off, t->pos_dim);
                        }
                    }
                }
            }
        }
        /* 4. top-down: the gradients of the inner means reach the leaves below, each divided by n(A) */
        for (i64 lev = 0; lev < t->num_levels; ++lev) {
#pragma omp for schedule(static)
            for (i64 s = t->level_ptr[lev]; s < t->level_ptr[lev + 1]; ++s) {
                const i64 p = t->parent[s], r = t->leaf_row[s];
                if (r < 0) {
                    const i64 ri = t->inner_row[s];
                    const REAL inv = (REAL)(1.0 / t->count[s]);
                    for (i64 i = 0; i < HD; ++i) {
                        drq[ri * HD + i] *= inv;
                        drk[ri * HD + i] *= inv;
                    }
                    for (i64 i = 0; i < HDV; ++i) drv[ri * HDV + i] *= inv;
                    if (p >= 0) {
                        const i64 rp = t->inner_row[p];
                        FN(axpy)(drq + ri * HD, 1, drq + rp * HD, HD);
                        FN(axpy)(drk + ri * HD, 1, drk + rp * HD, HD);
                        FN(axpy)(drv + ri * HDV, 1, drv + rp * HDV, HDV);
                    }
                } else if (p >= 0) {
                    const i64 rp = t->inner_row[p];
                    FN(axpy)(dq + r * HD, 1, drq + rp * HD, HD);
                    FN(axpy)(dk + r * HD, 1, drk + rp * HD, HD);
                    FN(axpy)(dv + r * HDV, 1, drv + rp * HDV, HDV);
                }
            }
        }
        free(buf);
    }
}

#undef FN
#undef CAT
#undef CAT2
