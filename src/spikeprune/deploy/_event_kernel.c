/* Event-driven inference kernels for compressed SNNs (spikeprune/event_engine.py).
 *
 * Built and cached exactly like _lif_kernel.c (spikeprune/fused.py's JIT path: system cc, hash-keyed
 * cache, file lock) and called through ctypes on contiguous CPU buffers.
 *
 * Layout: spike maps are uint8, channel-last (NHWC): one input spike at (n, y, x, ci) touches at most
 * k*k output pixels, and for each of them the surviving weights of (ci, ky, kx) are a short list of
 * output channels written into one contiguous channel vector (good locality, no im2col).
 *
 * Work = sum over input spikes of the surviving synapses of that input channel: it scales with
 * firing rate x weight density, which is the whole point (issue 16). Weights are either integer
 * levels (quantized layers: int32 accumulation, exact, scaled once in the LIF kernel) or float32.
 *
 * Weight lists (CSR over the "source" index): rowptr[src .. src+1) indexes cols[] (destination
 * channel) and vals[]. For a conv, src = (ci * KH + ky) * KW + kx; for a linear layer, src = input
 * feature (already permuted to the channel-last flatten order by the Python side).
 * Hybrid rows: a source whose surviving weights are dense enough (doff[src] >= 0) is stored as a
 * full row of C_out values at dvals + doff[src] and added with a contiguous loop that vectorises
 * (8 lanes with AVX2); an indexed scatter costs several times more per weight (measured,
 * docs/engine.md), so sparse lists are kept only for sparse rows.
 * Flat lists (stride 1 only): each input channel's sparse-row synapses, all k*k taps together, are
 * also one list fbeg[ci] .. fend[ci] into foff/fval, where foff is the destination's offset from the
 * output pixel (y + ph, x + pw): (-ky * Wo - kx) * Cout + co; fdense[ci] counts its dense rows. An
 * interior spike (every tap lands inside the output) walks that list in one loop, then adds its dense
 * rows (if any) without bounds checks: no per-tap bounds checks, index arithmetic or loop set-up for
 * the sparse rows, which on a 90 %-sparse ticket cost more than their few weights (measured:
 * benchmarks/event_engine/run2). Each output element still receives at most one weight per spike, in
 * the same spike order, so the sums are bit-identical to the per-tap path.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

int event_kernel_version(void) { return 4; }

#define DEFINE_CONV(NAME, ACC)                                                                          \
    void NAME(const uint8_t *in, ACC *out, int64_t N, int64_t H, int64_t W, int64_t Cin, int64_t Ho,   \
              int64_t Wo, int64_t Cout, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph,     \
              int64_t pw, const int64_t *rowptr, const int32_t *cols, const ACC *vals,                  \
              const int64_t *doff, const ACC *dvals, const int64_t *fbeg, const int64_t *fend,          \
              const int64_t *foff, const ACC *fval, const int64_t *fdense, int nthreads) {             \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                              \
        for (int64_t n = 0; n < N; n++) {                                                               \
            ACC *o = out + n * Ho * Wo * Cout;                                                          \
            memset(o, 0, sizeof(ACC) * Ho * Wo * Cout);                                                 \
            const uint8_t *s = in + n * H * W * Cin;                                                    \
            for (int64_t y = 0; y < H; y++)                                                             \
                for (int64_t x = 0; x < W; x++) {                                                       \
                    const uint8_t *px = s + (y * W + x) * Cin;                                          \
                    /* stride 1, every tap inside the output: the flat lists apply */                   \
                    const int interior = fbeg && y + ph >= KH - 1 && y + ph < Ho && x + pw >= KW - 1 && \
                                         x + pw < Wo;                                                   \
                    ACC *centre = interior ? o + ((y + ph) * Wo + (x + pw)) * Cout : o;                 \
                    for (int64_t ci = 0; ci < Cin; ci++) {                                              \
                        if (!px[ci]) continue;                                                          \
                        if (interior) {                                                                 \
                            for (int64_t j = fbeg[ci]; j < fend[ci]; j++) centre[foff[j]] += fval[j];   \
                            if (fdense[ci])                                                             \
                                for (int64_t t = 0; t < KH * KW; t++) {                                 \
                                    int64_t src = ci * KH * KW + t;                                     \
                                    if (doff[src] < 0) continue;                                        \
                                    ACC *dst = centre - ((t / KW) * Wo + t % KW) * Cout;                \
                                    const ACC *wv = dvals + doff[src];                                  \
                                    for (int64_t co = 0; co < Cout; co++) dst[co] += wv[co];            \
                                }                                                                       \
                            continue;                                                                   \
                        }                                                                               \
                        /* output (oy, ox) sees input (oy*sh - ph + ky, ...): ky = y + ph - oy*sh */    \
                        for (int64_t ky = 0; ky < KH; ky++) {                                           \
                            int64_t ty = y + ph - ky, oy = ty;                                          \
                            /* stride 1 needs no integer division (~25 cycles, 2 per tap) */            \
                            if (ty < 0) continue;                                                       \
                            if (sh != 1) { if (ty % sh) continue; oy = ty / sh; }                       \
                            if (oy >= Ho) continue;                                                     \
                            for (int64_t kx = 0; kx < KW; kx++) {                                       \
                                int64_t tx = x + pw - kx, ox = tx;                                      \
                                if (tx < 0) continue;                                                   \
                                if (sw != 1) { if (tx % sw) continue; ox = tx / sw; }                   \
                                if (ox >= Wo) continue;                                                 \
                                int64_t src = (ci * KH + ky) * KW + kx;                                 \
                                ACC *dst = o + (oy * Wo + ox) * Cout;                                   \
                                if (doff[src] >= 0) {                                                   \
                                    const ACC *wv = dvals + doff[src];                                  \
                                    for (int64_t co = 0; co < Cout; co++) dst[co] += wv[co];            \
                                } else                                                                  \
                                    for (int64_t j = rowptr[src]; j < rowptr[src + 1]; j++)             \
                                        dst[cols[j]] += vals[j];                                        \
                            }                                                                           \
                        }                                                                               \
                    }                                                                                   \
                }                                                                                       \
        }                                                                                               \
    }

DEFINE_CONV(event_conv_i32, int32_t)
DEFINE_CONV(event_conv_f32, float)

#define DEFINE_LINEAR(NAME, ACC)                                                                        \
    void NAME(const uint8_t *in, ACC *out, int64_t N, int64_t Fin, int64_t Fout, const int64_t *rowptr, \
              const int32_t *cols, const ACC *vals, const int64_t *doff, const ACC *dvals, int nthreads) { \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                              \
        for (int64_t n = 0; n < N; n++) {                                                               \
            ACC *o = out + n * Fout;                                                                    \
            memset(o, 0, sizeof(ACC) * Fout);                                                           \
            const uint8_t *s = in + n * Fin;                                                            \
            for (int64_t i = 0; i < Fin; i++) {                                                         \
                if (!s[i]) continue;                                                                    \
                if (doff[i] >= 0) {                                                                     \
                    const ACC *wv = dvals + doff[i];                                                    \
                    for (int64_t j = 0; j < Fout; j++) o[j] += wv[j];                                   \
                } else                                                                                  \
                    for (int64_t j = rowptr[i]; j < rowptr[i + 1]; j++) o[cols[j]] += vals[j];          \
            }                                                                                           \
        }                                                                                               \
    }

DEFINE_LINEAR(event_linear_i32, int32_t)
DEFINE_LINEAR(event_linear_f32, float)

/* LIF over T on accumulators acc[T, M] (M = B * neurons, channel-last so channel = m % C).
 * current = acc * a[c] + b[c] in double (a folds the weight scale, BatchNorm's gain and, for
 * SpikingJelly's decay_input, 1/tau; b folds BN's shift and any bias), then
 *     u_t = h_{t-1} + current_t;  s_t = u_t >= u_th (or > for snnTorch);  h_t = s_t ? hr : beta u_t
 * which is LTH-SNN Eq. 2-4 with h_0 = 0 (hr = V_reset; for SpikingJelly's hard reset to 0, hr = 0).
 * Double precision: the integer sum is exact, so the only rounding is in this affine + LIF. */
#define DEFINE_LIF(NAME, ACC)                                                                           \
    int64_t NAME(const ACC *acc, uint8_t *spk, int64_t T, int64_t M, int64_t C, const double *a,        \
                 const double *b, double beta, double u_th, double hr, int strict, int nthreads) {      \
        int64_t total = 0, P = M / C; /* no m % C per element: an integer division costs ~30 cycles */ \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads) reduction(+:total)")           \
        for (int64_t p = 0; p < P; p++)                                                                 \
            for (int64_t c = 0; c < C; c++) {                                                           \
                int64_t m = p * C + c;                                                                  \
                double h = 0.0, am = a[c], bm = b[c];                                                   \
                for (int64_t t = 0; t < T; t++) {                                                       \
                    double u = h + ((double)acc[t * M + m] * am + bm);                                  \
                    int s = strict ? (u > u_th) : (u >= u_th);                                          \
                    spk[t * M + m] = (uint8_t)s;                                                        \
                    total += s;                                                                         \
                    h = s ? hr : beta * u;                                                              \
                }                                                                                       \
            }                                                                                           \
        return total;                                                                                   \
    }

DEFINE_LIF(event_lif_i32, int32_t)
DEFINE_LIF(event_lif_f32, float)

/* The encoding layer's LIF on a static current x [B, C, HW] (NCHW, float32), repeated over T without
 * materialising the [T, B, ...] sequence, writing uint8 channel-last spikes spk [T, B, HW, C]. The
 * arithmetic is _lif_kernel.c's, operation for operation, in float32 (compiled with
 * -ffp-contract=off): u = h + x; s = u >= u_th; hb = u * beta; h = hb - hb * s [+ v_reset * s]. So the
 * encoder's spikes are bit-identical to the dense model's. Returns the number of spikes. */
int64_t event_lif_static_f32(const float *x, uint8_t *spk, int64_t T, int64_t B, int64_t C, int64_t HW,
                             float beta, float u_th, float v_reset, int nthreads) {
    int64_t total = 0;
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) reduction(+:total)")
    for (int64_t bc = 0; bc < B * C; bc++) {
        int64_t b = bc / C, c = bc % C;
        const float *xp = x + bc * HW;
        for (int64_t i = 0; i < HW; i++) {
            float h = 0.0f, v = xp[i];
            for (int64_t t = 0; t < T; t++) {
                float u = t == 0 ? v : h + v;
                float s = u >= u_th ? 1.0f : 0.0f;
                float hb = u * beta;
                h = hb - hb * s;
                if (v_reset != 0.0f) h = h + v_reset * s;
                spk[((t * B + b) * HW + i) * C + c] = (uint8_t)(s != 0.0f);
                total += s != 0.0f;
            }
        }
    }
    return total;
}

/* Readout (last layer, no neuron): out[m] = acc[m] * a[c] + b[c] as float32 logits. */
#define DEFINE_AFFINE(NAME, ACC)                                                                        \
    void NAME(const ACC *acc, float *out, int64_t M, int64_t C, const double *a, const double *b) {    \
        for (int64_t m = 0; m < M; m++) {                                                               \
            int64_t c = m % C;                                                                          \
            out[m] = (float)((double)acc[m] * a[c] + b[c]);                                             \
        }                                                                                               \
    }

DEFINE_AFFINE(event_affine_i32, int32_t)
DEFINE_AFFINE(event_affine_f32, float)

/* k x k max-pool with stride k (no padding, floor) on binary NHWC maps: an OR of the window. */
void event_maxpool_u8(const uint8_t *in, uint8_t *out, int64_t N, int64_t H, int64_t W, int64_t C,
                      int64_t k, int nthreads) {
    int64_t Ho = H / k, Wo = W / k;
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")
    for (int64_t n = 0; n < N; n++)
        for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Wo; ox++) {
                uint8_t *o = out + ((n * Ho + oy) * Wo + ox) * C;
                memset(o, 0, C);
                for (int64_t dy = 0; dy < k; dy++)
                    for (int64_t dx = 0; dx < k; dx++) {
                        const uint8_t *p = in + ((n * H + oy * k + dy) * W + ox * k + dx) * C;
                        for (int64_t c = 0; c < C; c++) o[c] |= p[c];
                    }
            }
}
