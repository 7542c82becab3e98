// Hand-written CPU kernels of the fused engine's two passes (float32, row-major rows).
//
// Built at first use by labelsmooth/ops/_fused_native.py with the system C++ compiler
// (-O3 -march=native -fopenmp) and called through ctypes: no torch headers, so the build takes
// seconds. The arithmetic is GCC/Clang vector extensions (16 floats), which the compiler lowers
// to the widest registers the machine has (one AVX-512 register, two AVX2 ones, ...).
//
// Why by hand: Inductor's generated loops call an out-of-line vector exp, so every running sum
// around it is spilled to memory and reloaded each iteration; here exp is inline and every sum
// lives in a register, and each row is walked while it sits in cache: once from memory for its
// max, then again from cache for all its sums (focal: power sums for integer gamma <= 3) and, for
// FLSD-53 and larger gamma, a third time for the focal sums once the row's lse is known (no
// second read of the logits from memory). Every pass is bound by vector arithmetic on the
// reference machine, so operations per element are what the comments count.
//
// Semantics are those of the Inductor kernels in _fused_inductor.py (the oracle in the tests):
// statistics relative to the row reference r (the max; 0 for an all -inf row), the terms at the
// max (e^0 = 1) counted apart, a zero share counting 0 even at a -inf logit, NaN propagated.

#include <stdint.h>
#include <string.h>
#include <math.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
enum { W = 16 };

static inline vf splat(float a) { return a - (vf){}; }
static inline vf load(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float* p, vf v) { memcpy(p, &v, sizeof v); }
// the first n (< W) lanes from p, the rest `fill`
static inline vf load_tail(const float* p, int64_t n, float fill) {
    float buf[W];
    for (int i = 0; i < W; i++) buf[i] = fill;
    memcpy(buf, p, n * sizeof(float));
    return load(buf);
}
static inline void store_tail(float* p, vf v, int64_t n) {
    float buf[W];
    store(buf, v);
    memcpy(p, buf, n * sizeof(float));
}
// the first n (<= W) lanes of v to p
static inline void store_n(float* p, vf v, int64_t n) {
    if (n == W) store(p, v);
    else store_tail(p, v, n);
}

// max(v, c) that keeps a NaN of v: one vmaxps on AVX-512 (its second operand wins on NaN),
// where GCC turns the portable select into a compare and a blend
static inline vf max_keep_nan(vf v, float c) {
#ifdef __AVX512F__
    __m512 cv = (__m512)splat(c);  // (the masked form: GCC 12 warns on the plain one's header)
    return (vf)_mm512_mask_max_ps(cv, (__mmask16)0xFFFF, cv, (__m512)v);
#else
    return v < splat(c) ? splat(c) : v;
#endif
}
static inline vi tail_mask(int64_t n) {
    vi lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return lane < (int32_t)n;
}
static inline vf sel(vi m, vf a, vf b) { return m ? a : b; }
static inline float hsum(vf v) {
    // pairwise, as a tree: the lanes of a long row hold sums of similar size
    float b[W];
    store(b, v);
    for (int w = W / 2; w > 0; w /= 2)
        for (int i = 0; i < w; i++) b[i] += b[i + w];
    return b[0];
}

// at or below this e^x is exactly 0 in float32 (2^-159 rounds to 0; the smallest subnormal is
// e^-103.28); clamping there keeps the reduction finite at -inf
static const float EXP_MIN = -110.0f;
// the kernels' exponents are <= 0 (logits minus their row max); the portable path clamps here
// so that its integer exponent stays defined (e^x then saturates near FLT_MAX, not inf)
static const float EXP_MAX = 88.7f;

// e^x for x <= 0 (NaN stays NaN, -inf and anything below -110 give exactly 0), and with want_u
// also u = -expm1(x) = 1 - e^x to full relative precision (the form focal needs as p -> 1).
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, e^r = 1 + r q(r) with q the Taylor series
// to r^6 (truncation 5e-9 relative), then times 2^n: one vscalefps on AVX-512 (exact, subnormals
// included), else in two halves built from the exponent bits (subnormals come out right too).
//
// xcl, when given, receives x clamped to -110 (finite at -inf, NaN kept): the callers' factor
// of z in e z and p l, which is then 0 at a -inf logit (e = 0) without another select.
template <bool want_u>
static inline vf vexp(vf x, vf* u, vf* xcl = nullptr) {
    vf xc = max_keep_nan(x, EXP_MIN);
    if (xcl) *xcl = xc;
    vf n = (xc * splat(1.44269504088896341f) + splat(12582912.0f)) - splat(12582912.0f);
    vf r = xc - n * splat(0.693145751953125f);
    r = r - n * splat(1.428606765330187045e-06f);
    vf q = splat(1.0f / 5040);
    q = q * r + splat(1.0f / 720);
    q = q * r + splat(1.0f / 120);
    q = q * r + splat(1.0f / 24);
    q = q * r + splat(1.0f / 6);
    q = q * r + splat(0.5f);
    q = q * r + splat(1.0f);
    vf rq = r * q;  // e^r - 1
#ifdef __AVX512F__
    __m512 pe = (__m512)(rq + splat(1.0f));
    vf e = (vf)_mm512_mask_scalef_ps(pe, (__mmask16)0xFFFF, pe, (__m512)n);
#else
    n = n > splat(EXP_MAX) ? splat(EXP_MAX) : n;
    vi ni = __builtin_convertvector(n, vi);
    vi h = ni >> 1;
    vi b1 = (h + 127) << 23, b2 = ((ni - h) + 127) << 23;
    vf s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    vf e = ((rq + splat(1.0f)) * s1) * s2;
#endif
    if (want_u) {
        // n = 0 (|x| <= ln2/2): u = -(e^r - 1), the series itself; else 1 - e^x, which has
        // no cancellation there (e^x <= 0.71); below -110 e = 0 and u = 1
        *u = n == splat(0.0f) ? -rq : splat(1.0f) - e;
    }
    return e;
}

// The row's max, the number of columns at it (ties) and the index of one of them, in one read
// from memory (bound by memory bandwidth: the counting is free). NaN is skipped here
// (torch.amax would return it): the sums of the next pass turn NaN, and the caller then makes the
// max NaN too. An all -inf row has no ties (its exponentials are all 0).
static inline float row_max(const float* row, int64_t K, float* ties, int64_t* at) {
    vf mv = splat(-INFINITY), cv = splat(0.0f);
    vi iv = {}, kv = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    auto step = [&](vf v, vi ok) {
        vi gt = v > mv, eq = (v == mv) & ok;
        cv = gt ? splat(1.0f) : (eq ? cv + splat(1.0f) : cv);
        mv = gt ? v : mv;
        iv = gt ? kv : iv;
        kv += (int32_t)W;
    };
    vi all = splat(0.0f) == splat(0.0f);
    int64_t k = 0;
    for (; k + W <= K; k += W) step(load(row + k), all);
    if (k < K) step(load_tail(row + k, K - k, -INFINITY), tail_mask(K - k));
    float m = mv[0];
    for (int i = 1; i < W; i++) m = mv[i] > m ? mv[i] : m;
    float t = 0.0f;
    *at = 0;
    for (int i = 0; i < W; i++)
        if (mv[i] == m) {
            t += cv[i];
            *at = iv[i];
        }
    *ties = isfinite(m) ? t : 0.0f;
    return m;
}

// u^k for k >= 0 by multiplication: a compile-time KP by squaring (u^4 in two products), KP < 0
// the runtime k one factor at a time
template <int KP>
static inline vf vpow(vf u, int k) {
    if (KP < 0) {
        vf out = splat(1.0f);
        for (int i = 0; i < k; i++) out = out * u;
        return out;
    }
    if (KP == 0) return splat(1.0f);
    if (KP == 1) return u;
    vf h = vpow<(KP > 1 ? KP / 2 : 0)>(u, 0);
    return KP % 2 ? h * h * u : h * h;
}


// Calls f(v, sv, ok) for each vector of a row: v the logits (tail lanes -inf), sv the shares
// (tail lanes 0; zeros without shares), ok the valid lanes; f is inlined into both loops.
template <bool SV, class F>
static inline void for_row(const float* row, const float* s, int64_t K, F f) {
    vi all = splat(0.0f) == splat(0.0f);
    int64_t k = 0;
    for (; k + W <= K; k += W) f(k, load(row + k), SV ? load(s + k) : splat(0.0f), all, W);
    if (k < K) {
        int64_t n = K - k;
        f(k, load_tail(row + k, n, -INFINITY), SV ? load_tail(s + k, n, 0.0f) : splat(0.0f),
          tail_mask(n), n);
    }
}

struct Row {
    float s1, sx, sex, ses, st;
    float E[3], Z[3];  // the focal power sums (ORD of them), see stats_row
};

// Pass 2 of a row from cache: the sums of ls_stats; e^z kept in ebuf for the focal pass (KEEP),
// or the focal power sums up to order ORD (<= 3) over the non-tie columns, w = s e:
// E_k = sum w e^(k-1) (E_1 only with shares: without, it is s1), Z_k = sum w e^(k-1) z, and st,
// the shares at the ties (_terms.focal_from_moments combines them once the lse is known).
template <bool SV, bool SX, bool SEX, bool SES, bool KEEP, int ORD>
static inline Row stats_row(const float* row, const float* s, int64_t K, float ref, float* ebuf) {
    vf rv = splat(ref);
    vf a_se = splat(0), a_sx = splat(0), a_sex = splat(0), a_ses = splat(0), a_st = splat(0);
    vf aE[3] = {splat(0), splat(0), splat(0)}, aZ[3] = {splat(0), splat(0), splat(0)};
    for_row<SV>(row, s, K, [&](int64_t k, vf v, vf sv, vi ok, int64_t n) {
        vf z = v - rv, zc;
        vf e = vexp<false>(z, nullptr, &zc);
        if (KEEP) store_n(ebuf + k, e, n);
        vi tie = z == splat(0.0f);
        // the ties (z = 0, counted by row_max) apart: one masked add
        a_se = tie ? a_se : a_se + e;
        if (SX) {
            if (SV) a_sx += sel(sv == splat(0.0f), splat(0.0f), z * sv);
            else a_sx += sel(ok, z, splat(0.0f));
        }
        if (SEX) a_sex += e * zc;
        if (SES) a_ses += e * sv;
        if (ORD > 0) {
            vf w = SV ? e * sv : e;
            if (SV) a_st += sel(tie, sv, splat(0.0f));
            for (int j = 0; j < ORD; j++) {
                if (j > 0) w = w * e;
                if (SV || j > 0) aE[j] = tie ? aE[j] : aE[j] + w;
                aZ[j] += w * zc;  // 0 at the ties (z = 0) and at -inf (w = 0, zc finite)
            }
        }
    });
    Row r;
    r.s1 = hsum(a_se);
    r.sx = SX ? 0.0f - hsum(a_sx) : 0.0f;
    r.sex = SEX ? hsum(a_sex) : 0.0f;
    r.ses = SES ? hsum(a_ses) : 0.0f;
    r.st = SV && ORD > 0 ? hsum(a_st) : 0.0f;
    for (int j = 0; j < ORD; j++) {
        r.E[j] = hsum(aE[j]);
        r.Z[j] = hsum(aZ[j]);
    }
    return r;
}

// Pass 3 (focal) of a row from cache, with l = z - L and p = e^l = e_buf / S, u = 1 - p (the
// one column that can have p > 1/2, the row's unique max, is corrected by the caller).
template <bool SV, int G>
static inline void focal_row(const float* row, const float* s, int64_t K, float ref, float L,
                             float inv_s, int g, const float* ebuf, float* fs, float* fa) {
    const int gg = G > 0 ? G : g;
    vf rv = splat(ref), Lv = splat(L), iv = splat(inv_s), giv = splat((float)gg * inv_s);
    vf a_fs = splat(0), a_fa = splat(0);
    for_row<SV>(row, s, K, [&](int64_t k, vf v, vf sv, vi ok, int64_t n) {
        vf z = v - rv;
        vf l = z - Lv;  // fg keeps -l = inf at a -inf logit (with its share, an infinite loss)
        vf lc = max_keep_nan(z, EXP_MIN) - Lv;  // p l = 0 there (p = 0)
        vf e = n == W ? load(ebuf + k) : load_tail(ebuf + k, n, 0.0f);
        vf u = splat(1.0f) - e * iv;
        vf um1 = vpow<G < 0 ? -1 : G - 1>(u, gg - 1);
        vf a = um1 * (giv * (e * lc) - u);  // u^(g-1) (g p l - u)
        vf w = um1 * u;                     // fg = -w l
        if (SV) {
            vi on = sv != splat(0.0f);
            a_fs -= sel(on, w * l * sv, splat(0.0f));
            a_fa += sel(on, a * sv, splat(0.0f));
        } else {
            a_fs -= sel(ok, w * l, splat(0.0f));
            a_fa += sel(ok, a, splat(0.0f));
        }
    });
    *fs = hsum(a_fs);
    *fa = hsum(a_fa);
}

// (fg, a) of one column from its u, p and l (double).
static inline void focal_one(double u, double p, double l, int g, double* fg, double* a) {
    double um1 = 1.0;
    for (int i = 0; i < g - 1; i++) um1 *= u;
    *fg = um1 * u * -l;
    *a = um1 * (g * p * l - u);
}

template <bool SV>
static inline void focal_dispatch(int g, const float* row, const float* s, int64_t K, float ref,
                                  float L, float inv_s, const float* ebuf, float* fs, float* fa) {
    switch (g) {
        case 1: focal_row<SV, 1>(row, s, K, ref, L, inv_s, g, ebuf, fs, fa); break;
        case 2: focal_row<SV, 2>(row, s, K, ref, L, inv_s, g, ebuf, fs, fa); break;
        case 3: focal_row<SV, 3>(row, s, K, ref, L, inv_s, g, ebuf, fs, fa); break;
        case 5: focal_row<SV, 5>(row, s, K, ref, L, inv_s, g, ebuf, fs, fa); break;
        default: focal_row<SV, -1>(row, s, K, ref, L, inv_s, g, ebuf, fs, fa); break;
    }
}

template <bool SV, bool SX, bool SEX, bool SES, int ORD>
static void stats_all(const float* x, int64_t R, int64_t K, int64_t ldx, const float* s,
                      const float* xy, int gamma, float* m, float* s1, float* t, float* sx,
                      float* sex, float* ses, float* fs, float* fa, uint8_t* low, float* mom,
                      float* st, int nthreads) {
#pragma omp parallel num_threads(nthreads)
    {
        float* ebuf = gamma ? new float[K > 0 ? K : 1] : nullptr;
#pragma omp for schedule(static)
        for (int64_t rI = 0; rI < R; rI++) {
            const float* row = x + rI * ldx;
            float ties;
            int64_t at;
            float mx = row_max(row, K, &ties, &at);
            float ref = (mx == -INFINITY) ? 0.0f : mx;
            Row r = gamma ? stats_row<SV, SX, SEX, SES, true, ORD>(row, s, K, ref, ebuf)
                          : stats_row<SV, SX, SEX, SES, false, ORD>(row, s, K, ref, ebuf);
            m[rI] = isnan(r.s1) && mx != INFINITY ? NAN : mx;  // a NaN in the row (see row_max)
            s1[rI] = r.s1;
            t[rI] = ties;
            if (SX) sx[rI] = r.sx;
            if (SEX) sex[rI] = r.sex;
            if (SES) ses[rI] = r.ses;
            if (ORD > 0) {
                if (SV) st[rI] = r.st;
                for (int j = 0; j < ORD; j++) {
                    mom[(2 * j) * R + rI] = r.E[j];
                    mom[(2 * j + 1) * R + rI] = r.Z[j];
                }
            }
            if (!gamma) continue;
            double S = (double)r.s1 + (double)ties;
            float L = (float)log(S);
            int g = gamma;
            if (gamma < 0) {
                float py = expf((xy[rI] - ref) - L);
                low[rI] = py < 0.2f;
                g = low[rI] ? 5 : 3;
            }
            float inv_s = (float)(1.0 / S);
            focal_dispatch<SV>(g, row, s, K, ref, L, inv_s, ebuf, fs + rI, fa + rI);
            float share = SV ? s[at] : 1.0f;
            if (ties == 1.0f && S < 2.0 && share != 0.0f) {
                // the max column has p = 1/S > 1/2, where 1 - p loses u's digits: swap its
                // float terms for exact ones, u = (S - 1)/S = s1/S (a confident row's loss)
                double fe, ae, ff, af;
                focal_one((double)r.s1 / S, 1.0 / S, -(double)L, g, &fe, &ae);
                focal_one((double)(1.0f - inv_s), (double)inv_s, -(double)L, g, &ff, &af);
                fs[rI] = (float)((double)fs[rI] + share * (fe - ff));
                fa[rI] = (float)((double)fa[rI] + share * (ae - af));
            }
        }
        delete[] ebuf;
    }
}

typedef void (*stats_fn)(const float*, int64_t, int64_t, int64_t, const float*, const float*, int,
                         float*, float*, float*, float*, float*, float*, float*, float*,
                         uint8_t*, float*, float*, int);

// [sv][sx][sex][ses] without power sums; [order - 1][sv][sex][ses] with them (sx always)
#define SV4(SX, ORD) &stats_all<0, SX, 0, 0, ORD>, &stats_all<0, SX, 0, 1, ORD>, \
    &stats_all<0, SX, 1, 0, ORD>, &stats_all<0, SX, 1, 1, ORD>, &stats_all<1, SX, 0, 0, ORD>, \
    &stats_all<1, SX, 0, 1, ORD>, &stats_all<1, SX, 1, 0, ORD>, &stats_all<1, SX, 1, 1, ORD>
static const stats_fn STATS_PLAIN[2][8] = {{SV4(0, 0)}, {SV4(1, 0)}};
static const stats_fn STATS_MOMENTS[3][8] = {{SV4(1, 1)}, {SV4(1, 2)}, {SV4(1, 3)}};
#undef SV4

// The gradient passes' row loop: rows where live is 0 get exactly 0 (their logits may be
// +-inf or NaN: 0 by selection, not by multiplication); f(rI, row, orow) writes the others.
template <class F>
static void for_live_rows(const float* x, int64_t R, int64_t K, int64_t ldx, const uint8_t* live,
                          float* out, int64_t ldo, int nthreads, F f) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t rI = 0; rI < R; rI++) {
        float* orow = out + rI * ldo;
        if (live[rI]) f(rI, x + rI * ldx, orow);
        else memset(orow, 0, K * sizeof(float));
    }
}

template <bool SV, bool BU>
static void grad_all(const float* x, int64_t R, int64_t K, int64_t ldx, const float* ref,
                     const float* a, const float* b, const float* s, const float* bu,
                     const uint8_t* live, float* out, int64_t ldo, int nthreads) {
    for_live_rows(x, R, K, ldx, live, out, ldo, nthreads, [&](int64_t rI, const float* row,
                                                               float* orow) {
        vf rv = splat(ref[rI]), av = splat(a[rI]);
        vf bv = splat(SV ? b[rI] : 0.0f), buv = splat(BU ? bu[rI] : 0.0f);
        for_row<SV>(row, s, K, [&](int64_t k, vf v, vf sv, vi, int64_t n) {
            vf gr = av * vexp<false>(v - rv, nullptr);
            if (SV) gr = gr - bv * sv;
            if (BU) gr = gr - buv;
            store_n(orow + k, gr, n);
        });
    });
}

// The gradient with terms for one row; G = 0 without focal elements (no focal, or no smoothing:
// a_j only multiplies cs), G < 0 the runtime g. p = e^z / S with 1/S = e^-L folded into the
// per-row coefficients of p, and g into every coefficient: one exponential per element.
template <bool SV, bool CPX, int G>
static inline void grad_terms_row(const float* row, const float* s, int64_t K, float* orow,
                                  float ref, float L, float g, float cp, float cs, float cps,
                                  float cpx, int gm) {
    // without focal, p = e^z / S with 1/S folded into the coefficients of p (one exponential of
    // z); with focal, p = e^l of l = z - L itself: its clamped l is then the finite factor of
    // p l, and u = 1 - p is an addition, not one more product (the passes are bound by products)
    float iS = G != 0 ? 1.0f : (float)exp(-(double)L);
    vf rv = splat(ref), Lv = splat(L), gamv = splat((float)gm);
    vf cpv = splat(cp * g * iS), cpsv = splat(cps * g * iS), cpxv = splat(cpx * g * iS);
    vf csv = splat(cs * g);
    for_row<SV>(row, s, K, [&](int64_t k, vf v, vf sv, vi, int64_t n) {
        vf z = v - rv, zc, lc;
        vf e = G != 0 ? vexp<false>(z - Lv, nullptr, &lc) : vexp<false>(z, nullptr, &zc);
        if (CPX && G != 0) zc = max_keep_nan(z, EXP_MIN);
        vf kk = SV ? cpv + cpsv * sv : cpv;
        if (CPX) kk = kk + cpxv * zc;  // z p is 0 at a -inf logit (p = 0, z clamped)
        vf cj = SV ? csv * sv : csv;
        vf gr;
        if (G != 0) {
            // u = 1 - p: its absolute error (2^-24) moves a_j by at most g 2^-24, next to a
            // cp p_j that keeps its relative precision (as _terms.focal_elems(one_exp="p"))
            vf u = splat(1.0f) - e;
            vf a = vpow<G < 0 ? -1 : G - 1>(u, gm - 1) * (gamv * (e * lc) - u);
            gr = kk * e + cj * a;
        } else {
            gr = kk * e - cj;
        }
        store_n(orow + k, gr, n);
    });
}

template <bool SV, bool CPX>
static void grad_terms_all(const float* x, int64_t R, int64_t K, int64_t ldx, const float* ref,
                           const float* L, const float* g, const float* cp, const float* cs,
                           const float* s, const float* cps, const float* cpx, const uint8_t* low,
                           int gamma, const uint8_t* live, float* out, int64_t ldo, int nthreads) {
    for_live_rows(x, R, K, ldx, live, out, ldo, nthreads, [&](int64_t rI, const float* row,
                                                               float* orow) {
        int gm = !cs ? 0 : gamma < 0 ? (low[rI] ? 5 : 3) : gamma;
        float a1 = ref[rI], a2 = L[rI], a3 = g[rI], a4 = cp[rI], a5 = cs ? cs[rI] : 0.0f;
        float a6 = cps ? cps[rI] : 0.0f, a7 = CPX ? cpx[rI] : 0.0f;
#define GT(GG) grad_terms_row<SV, CPX, GG>(row, s, K, orow, a1, a2, a3, a4, a5, a6, a7, gm)
        switch (gm) {
            case 0: GT(0); break;
            case 1: GT(1); break;
            case 2: GT(2); break;
            case 3: GT(3); break;
            case 5: GT(5); break;
            default: GT(-1); break;
        }
#undef GT
    });
}

extern "C" {

// The statistics pass of rows [0, R) of x (row stride ldx); outputs (R,) each, null when unwanted.
//   m:  row max;  s1: sum of e^(x - r) without the ties (x = r), whose count goes to t;
//   sx: sum s (r - x) (s = 1 when `s` is null; a zero share counts 0);
//   sex: sum e (x - r) (x - r clamped: 0 at a -inf logit);  ses: sum s e (shares only);
//   order 1..3 (sx required): the focal power sums of stats_row into mom (2 order rows of R:
//     E_1, Z_1, E_2, ...; E_1 left alone without shares) and st (with shares);
//   focal (gamma > 0: that integer gamma; gamma = -1: FLSD-53, 5 where p_y < 0.2 else 3):
//     with S = s1 + t and L = log S (in double, L rounded to float), l = x - r - L, p = e^l,
//     u = 1 - p:  fs = sum s u^g (-l),  fa = sum s u^(g-1) (g p l - u) (l clamped for p l),
//     low = FLSD-53's switch from p_y = e^(xy - r - L) (xy: the target logits).
void ls_stats(const float* x, int64_t R, int64_t K, int64_t ldx, const float* s, const float* xy,
              int gamma, int order, float* m, float* s1, float* t, float* sx, float* sex,
              float* ses, float* fs, float* fa, uint8_t* low, float* mom, float* st,
              int nthreads) {
    int idx = (s ? 4 : 0) | (sex ? 2 : 0) | (ses && s ? 1 : 0);
    stats_fn f = order > 0 ? STATS_MOMENTS[order - 1][idx] : STATS_PLAIN[sx ? 1 : 0][idx];
    f(x, R, K, ldx, s, xy, gamma, m, s1, t, sx, sex, ses, fs, fa, low, mom, st, nthreads);
}

// The gradient pass without terms (target column left to the caller), out may be x:
//   out = live ? a e^(x - ref) - b s_j - bu : 0    (b, s null: no share-vector term; bu null: 0)
void ls_grad(const float* x, int64_t R, int64_t K, int64_t ldx, const float* ref, const float* a,
             const float* b, const float* s, const float* bu, const uint8_t* live, float* out,
             int64_t ldo, int nthreads) {
    if (s && b)
        grad_all<true, false>(x, R, K, ldx, ref, a, b, s, bu, live, out, ldo, nthreads);
    else if (bu)
        grad_all<false, true>(x, R, K, ldx, ref, a, b, s, bu, live, out, ldo, nthreads);
    else
        grad_all<false, false>(x, R, K, ldx, ref, a, b, s, bu, live, out, ldo, nthreads);
}

// The gradient pass with terms (the formula of _terms.grad_elems; target column left to the
// caller), times g, rows where live is 0 get 0; out may be x. With z = x - ref, l = z - L,
// p = e^l:  (cp + cps s_j + cpx z) p + cs_j h_j,  h = -1, or a (focal, as in ls_stats), with
// cs_j = cs s_j (share vector s) or cs (uniform shares, already times the share), null: none.
// cps applies with a share vector only; gamma as in ls_stats, FLSD-53 per row from low.
void ls_grad_terms(const float* x, int64_t R, int64_t K, int64_t ldx, const float* ref,
                   const float* L, const float* g, const float* cp, const float* cs, const float* s,
                   const float* cps, const float* cpx, const uint8_t* low, int gamma,
                   const uint8_t* live, float* out, int64_t ldo, int nthreads) {
#define GTA(SV, CPX) \
    grad_terms_all<SV, CPX>(x, R, K, ldx, ref, L, g, cp, cs, s, cps, cpx, low, gamma, live, out, \
                            ldo, nthreads)
    if (s) {
        if (cpx) GTA(true, true);
        else GTA(true, false);
    } else {
        if (cpx) GTA(false, true);
        else GTA(false, false);
    }
#undef GTA
}

}  // extern "C"
