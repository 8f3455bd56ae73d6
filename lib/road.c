/* road.c: RoAd pair arithmetic (DESIGN.md 3.2).
 *
 * A RoAd module multiplies its output by a block-diagonal matrix of 2x2
 * scaled rotations. The pairs are half-group: within each group of g
 * outputs, output j pairs with output j + g/2. Everything here works on the
 * canonical form, one coefficient pair (c[p], s[p]) per output, so that the
 * three parameterizations (road_1, road_2, road_4) meet in one kernel and
 * composition never needs to know which variant it came from. */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

int64_t actl__road_out(const actl_adapter *a, const actl__module *m)
{
    if (!m->road_theta || !m->road_alpha || m->road_theta->ndim != 1)
        return 0;
    int64_t len = m->road_theta->shape[0];
    switch (a->info.variant) {
    case ACTL_ROAD_1: return 2 * len;
    case ACTL_ROAD_2: return len;
    case ACTL_ROAD_4: return len % 2 ? 0 : len / 2;
    }
    return 0;
}

int actl__road_alpha_pow(double alpha, double w, const char *who, const char *module,
                         double *out)
{
    /* w = 1 must give alpha itself, sign included (an adapter merged at full
     * weight is the adapter), so pow serves only other weights, where a
     * non-positive alpha has no real power. */
    if (w == 1.0) {
        *out = alpha;
        return ACTL_OK;
    }
    if (w == 0.0) {
        *out = 1.0;
        return ACTL_OK;
    }
    if (!(alpha > 0.0))
        return actl__err(ACTL_EINVAL,
                         "'%s': module '%s': a road_alpha of %g has no real power %g; "
                         "only weight 1 applies a non-positive alpha", who, module, alpha, w);
    *out = pow(alpha, w);
    return ACTL_OK;
}

int actl__road_coeffs(const actl_adapter *a, const actl__module *m, double w, double *c,
                      double *s)
{
    int64_t out = actl__road_out(a, m);
    int64_t g = a->info.group_size;
    if (out <= 0 || g <= 0 || g % 2 || out % g)
        return actl__err(ACTL_ESHAPE,
                         "'%s': module '%s': RoAd group size %lld does not divide its %lld outputs "
                         "into even groups", a->origin, m->info.name, (long long)g,
                         (long long)out);
    int64_t h = g / 2;
    for (int64_t p = 0; p < out; p++) {
        int64_t k = p / g, o = p % g, j = o % h;
        int64_t ta, tt_c, tt_s; /* index of alpha/theta for c and for s */
        switch (a->info.variant) {
        case ACTL_ROAD_1: ta = tt_c = tt_s = k * h + j; break;
        case ACTL_ROAD_2: ta = tt_c = tt_s = p; break;
        default: /* road_4: separate parameters for the cosine and the sine part */
            tt_c = 2 * g * k + o;
            tt_s = 2 * g * k + g + o;
            ta = -1;
            break;
        }
        double ac = 1.0, as = 1.0;
        double al_c = actl__tensor_get_f64(m->road_alpha, (size_t)(ta >= 0 ? ta : tt_c));
        int rc = actl__road_alpha_pow(al_c, w, a->origin, m->info.name, &ac);
        if (!rc && ta < 0)
            rc = actl__road_alpha_pow(actl__tensor_get_f64(m->road_alpha, (size_t)tt_s), w,
                                      a->origin, m->info.name, &as);
        else
            as = ac;
        if (rc)
            return rc;
        double thc = w * actl__tensor_get_f64(m->road_theta, (size_t)tt_c);
        double ths = w * actl__tensor_get_f64(m->road_theta, (size_t)tt_s);
        c[p] = ac * cos(thc);
        s[p] = as * sin(ths);
        /* A huge weight overflows theta w or alpha^w; what follows would
         * rotate by infinities and NaN. */
        if (!isfinite(c[p]) || !isfinite(s[p]))
            return actl__err(ACTL_EINVAL,
                             "'%s': module '%s': weight %g gives RoAd coefficients that are not "
                             "finite for output %lld (alpha^w = %g and %g, theta w = %g and %g)",
                             a->origin, m->info.name, w, (long long)p, ac, as, thc, ths);
    }
    return ACTL_OK;
}

void actl__road_rotate_rows(const double *c, const double *s, int64_t out, int group, float *x,
                            int64_t cols)
{
    int64_t h = group / 2;
    for (int64_t base = 0; base < out; base += group)
        for (int64_t j = 0; j < h; j++) {
            int64_t p = base + j, q = p + h;
            double cp = c[p], sp = s[p], cq = c[q], sq = s[q];
            float *xp = x + p * cols, *xq = x + q * cols;
            for (int64_t i = 0; i < cols; i++) {
                double a = xp[i], b = xq[i];
                xp[i] = (float)(cp * a - sp * b);
                xq[i] = (float)(sq * a + cq * b);
            }
        }
}

int actl__road_invert(double *c, double *s, int64_t out, int group, const char *what)
{
    int64_t h = group / 2;
    /* Check every pair before changing any, so a refusal leaves c and s whole. */
    for (int64_t base = 0; base < out; base += group)
        for (int64_t j = 0; j < h; j++) {
            int64_t p = base + j, q = p + h;
            double det = c[p] * c[q] + s[p] * s[q];
            if (!(fabs(det) >= 1e-6))
                return actl__err(ACTL_EINVAL,
                                 "%s: the rotation of outputs %lld and %lld is near-singular "
                                 "(determinant %g) and cannot be undone",
                                 what, (long long)p, (long long)q, det);
        }
    for (int64_t base = 0; base < out; base += group)
        for (int64_t j = 0; j < h; j++) {
            int64_t p = base + j, q = p + h;
            double det = c[p] * c[q] + s[p] * s[q];
            double cp = c[p], sp = s[p], cq = c[q], sq = s[q];
            c[p] = cq / det;
            s[p] = -sp / det;
            c[q] = cp / det;
            s[q] = -sq / det;
        }
    return ACTL_OK;
}

void actl__road_compose(const double *cA, const double *sA, const double *cB, const double *sB,
                        int64_t out, int group, double *c, double *s)
{
    int64_t h = group / 2;
    for (int64_t base = 0; base < out; base += group)
        for (int64_t j = 0; j < h; j++) {
            int64_t p = base + j, q = p + h;
            /* The pair's matrix is [[c_p, -s_p], [s_q, c_q]]; B after A is M_B M_A. */
            double acp = cA[p], asp = sA[p], acq = cA[q], asq = sA[q];
            double bcp = cB[p], bsp = sB[p], bcq = cB[q], bsq = sB[q];
            c[p] = bcp * acp - bsp * asq;
            s[p] = bcp * asp + bsp * acq;
            s[q] = bsq * acp + bcq * asq;
            c[q] = bcq * acq - bsq * asp;
        }
}
