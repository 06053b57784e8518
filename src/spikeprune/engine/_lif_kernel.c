/* Fused multi-step LIF (LTH-SNN Eq. 2-4): one pass over T per direction, state kept in registers.
 *
 * Built at first use by spikeprune/fused.py with plain gcc (no Torch headers: a Torch extension
 * typically takes tens of seconds to compile, this file ~2-3 s) and called through ctypes on contiguous CPU
 * buffers. Compile flags keep the arithmetic IEEE: -ffp-contract=off (no FMA contraction) and no
 * -ffast-math, so every forward operation rounds exactly as the eager kernels of neuron.py do:
 *
 *     u_t = h_{t-1} + x_t          (Eq. 2; one rounding, as torch.add)
 *     s_t = u_t >= u_th            (Eq. 3)
 *     hb  = u_t * beta;  h_t = hb - hb * s_t  [+ v_reset * s_t]   (Eq. 4, as mul + addcmul [+ add])
 *
 * hb * s_t is exact for s_t in {0, 1}, so the spikes and u are bit-identical to the eager path.
 *
 * The backward runs dL/du_t = sg * (dL/ds_t + carry * (v_reset - beta u_t)) + beta carry (1 - s_t)
 * (neuron.py's _lif_backward; detach_reset drops the carry term inside the bracket) with
 * carry = dL/du_{t+1}. It reads only u (the spikes are recomputed as u >= u_th, which is exactly how
 * they were made) and dL/ds, and writes dL/dx: 3 tensor passes per timestep against ~28 eager ones.
 *
 * Work is split over the neurons (B*C*H*W) into blocks of BLK: OpenMP threads take blocks, a block
 * walks all T with its state in a stack buffer, and the inner loop over the block vectorises.
 */
#include <math.h>
#include <stdint.h>

#define BLK 1024

enum { SG_ATAN = 0, SG_SIGMOID = 1, SG_TRIANGLE = 2, SG_RECTANGLE = 3 };

#define DEFINE_FORWARD(NAME, REAL)                                                                   \
    void NAME(const REAL *x, REAL *s, REAL *u, int64_t T, int64_t N, REAL beta, REAL u_th,          \
              REAL v_reset, int keep_u, int nthreads) {                                             \
        int64_t nblocks = (N + BLK - 1) / BLK;                                                      \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                          \
        for (int64_t b = 0; b < nblocks; b++) {                                                     \
            REAL h[BLK];                                                                            \
            int64_t i0 = b * BLK, n = (N - i0 < BLK) ? N - i0 : BLK;                                \
            for (int64_t t = 0; t < T; t++) {                                                       \
                const REAL *xt = x + t * N + i0;                                                    \
                REAL *st = s + t * N + i0;                                                          \
                REAL *ut = keep_u ? u + t * N + i0 : 0;                                             \
                for (int64_t i = 0; i < n; i++) {                                                   \
                    REAL ui = (t == 0) ? xt[i] : h[i] + xt[i];                                      \
                    REAL si = (ui >= u_th) ? (REAL)1 : (REAL)0;                                     \
                    REAL hb = ui * beta;                                                            \
                    REAL hn = hb - hb * si;                                                         \
                    if (v_reset != (REAL)0) hn = hn + v_reset * si;                                 \
                    h[i] = hn;                                                                      \
                    st[i] = si;                                                                     \
                    if (keep_u) ut[i] = ui;                                                         \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }

DEFINE_FORWARD(lif_forward_f32, float)
DEFINE_FORWARD(lif_forward_f64, double)

/* Surrogate derivatives sg(z; alpha) of SpikingJelly 2.0 (activation_based.surrogate):
 * ATan: alpha/2 / (1 + (pi/2 alpha z)^2); Sigmoid: alpha sig(alpha z)(1 - sig(alpha z));
 * PiecewiseQuadratic ("triangle"): alpha max(0, 1 - alpha |z|); Rect ("rectangle"): alpha [|z| < 0.5/alpha]. */
#define SG_ATAN_F(REAL, z, p1, p2) ((p2) / ((REAL)1 + ((p1) * (z)) * ((p1) * (z))))
#define SG_SIGMOID_F(REAL, z, p1, p2) SIGMOID_##REAL(z, p1)
#define SG_TRIANGLE_F(REAL, z, p1, p2) \
    ((p1) * (((REAL)1 - (p1) * fabs_##REAL(z)) > 0 ? ((REAL)1 - (p1) * fabs_##REAL(z)) : (REAL)0))
#define SG_RECTANGLE_F(REAL, z, p1, p2) ((fabs_##REAL(z) < (p2)) ? (p1) : (REAL)0)

static inline float fabs_float(float z) { return fabsf(z); }
static inline double fabs_double(double z) { return fabs(z); }
static inline float SIGMOID_float(float z, float a) {
    float e = (float)1 / ((float)1 + expf(-a * z));
    return a * e * ((float)1 - e);
}
static inline double SIGMOID_double(double z, double a) {
    double e = 1.0 / (1.0 + exp(-a * z));
    return a * e * (1.0 - e);
}

#define DEFINE_BACKWARD_SG(NAME, REAL, SGF)                                                          \
    static void NAME(const REAL *gs, const REAL *u, REAL *gx, int64_t T, int64_t N, REAL beta,      \
                     REAL u_th, REAL v_reset, REAL p1, REAL p2, int detach, int nthreads) {         \
        int64_t nblocks = (N + BLK - 1) / BLK;                                                      \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                          \
        for (int64_t b = 0; b < nblocks; b++) {                                                     \
            REAL carry[BLK];                                                                        \
            int64_t i0 = b * BLK, n = (N - i0 < BLK) ? N - i0 : BLK;                                \
            for (int64_t t = T - 1; t >= 0; t--) {                                                  \
                const REAL *gst = gs + t * N + i0, *ut = u + t * N + i0;                            \
                REAL *gxt = gx + t * N + i0;                                                        \
                if (t == T - 1) { /* h_T feeds nothing */                                           \
                    for (int64_t i = 0; i < n; i++) {                                               \
                        REAL z = ut[i] - u_th;                                                      \
                        REAL g = SGF(REAL, z, p1, p2) * gst[i];                                     \
                        carry[i] = g;                                                               \
                        gxt[i] = g;                                                                 \
                    }                                                                               \
                } else if (detach) {                                                                \
                    for (int64_t i = 0; i < n; i++) {                                               \
                        REAL z = ut[i] - u_th;                                                      \
                        REAL keep = (ut[i] >= u_th) ? (REAL)0 : beta;                               \
                        REAL g = SGF(REAL, z, p1, p2) * gst[i] + keep * carry[i];                   \
                        carry[i] = g;                                                               \
                        gxt[i] = g;                                                                 \
                    }                                                                               \
                } else {                                                                            \
                    for (int64_t i = 0; i < n; i++) {                                               \
                        REAL z = ut[i] - u_th;                                                      \
                        REAL keep = (ut[i] >= u_th) ? (REAL)0 : beta;                               \
                        REAL a = v_reset - beta * ut[i];                                            \
                        REAL g = SGF(REAL, z, p1, p2) * (gst[i] + carry[i] * a) + keep * carry[i];  \
                        carry[i] = g;                                                               \
                        gxt[i] = g;                                                                 \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }

#define DEFINE_BACKWARD(NAME, REAL)                                                                  \
    DEFINE_BACKWARD_SG(NAME##_atan, REAL, SG_ATAN_F)                                                 \
    DEFINE_BACKWARD_SG(NAME##_sigmoid, REAL, SG_SIGMOID_F)                                           \
    DEFINE_BACKWARD_SG(NAME##_triangle, REAL, SG_TRIANGLE_F)                                         \
    DEFINE_BACKWARD_SG(NAME##_rectangle, REAL, SG_RECTANGLE_F)                                       \
    int NAME(const REAL *gs, const REAL *u, REAL *gx, int64_t T, int64_t N, REAL beta, REAL u_th,   \
             REAL v_reset, int surrogate, REAL alpha, int detach, int nthreads) {                   \
        const REAL pi = (REAL)3.14159265358979323846;                                               \
        switch (surrogate) {                                                                        \
        case SG_ATAN:                                                                               \
            NAME##_atan(gs, u, gx, T, N, beta, u_th, v_reset, pi / 2 * alpha, alpha / 2, detach,    \
                        nthreads);                                                                  \
            return 0;                                                                               \
        case SG_SIGMOID:                                                                            \
            NAME##_sigmoid(gs, u, gx, T, N, beta, u_th, v_reset, alpha, 0, detach, nthreads);       \
            return 0;                                                                               \
        case SG_TRIANGLE:                                                                           \
            NAME##_triangle(gs, u, gx, T, N, beta, u_th, v_reset, alpha, 0, detach, nthreads);      \
            return 0;                                                                               \
        case SG_RECTANGLE:                                                                          \
            NAME##_rectangle(gs, u, gx, T, N, beta, u_th, v_reset, alpha, (REAL)0.5 / alpha,        \
                             detach, nthreads);                                                     \
            return 0;                                                                               \
        }                                                                                           \
        return 1;                                                                                   \
    }

DEFINE_BACKWARD(lif_backward_f32, float)
DEFINE_BACKWARD(lif_backward_f64, double)

/* ABI version: fused.py refuses a cached library whose version differs. */
int lif_kernel_version(void) { return 1; }
