/* hgattn's native CPU kernel: the HSA dynamic programme, forward and backward, fused per tree level with
 * OpenMP. Loaded with ctypes by hgattn/attention/native.py (plain C: no Python or torch headers). */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

typedef int64_t i64;

/* The finite stand-in for log(0), as hgattn.hierarchy.NEG. */
#define NEG (-1e30)

/* A hierarchy in level order (the children of a node contiguous), and the shapes of one call. */
typedef struct {
    i64 num_slots, num_levels, num_leaves, num_inner, max_width;
    const i64 *level_ptr;   /* [L + 1] slot range of each level */
    const i64 *parent;      /* [T] parent slot, -1 for a root */
    const i64 *child_start; /* [T] first child slot */
    const i64 *child_count; /* [T] number of children (0 for a leaf) */
    const i64 *leaf_row;    /* [T] leaf row, -1 for an inner node */
    const i64 *inner_row;   /* [T] inner row, -1 for a leaf */
    const i64 *pair_ptr;    /* [T] first sibling pair of the family of each slot (sum of the squared widths before) */
    const double *count;    /* [T] leaves below */
    const double *log_count;
    i64 heads, dim, vdim, pos_heads, pos_dim, include_self, threads;
} Tree;

#define REAL float
#define SUFFIX _f32
#define EXP expf
#define LOG logf
#define LOG1P log1pf
#define FABS fabsf
#include "hsa_kernel.h"
#undef REAL
#undef SUFFIX
#undef EXP
#undef LOG
#undef LOG1P
#undef FABS

#define REAL double
#define SUFFIX _f64
#define EXP exp
#define LOG log
#define LOG1P log1p
#define FABS fabs
#include "hsa_kernel.h"
