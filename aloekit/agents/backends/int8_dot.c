/* x @ W.T for a Q4_1 or Q8_0 weight W, as llama.cpp multiplies one: each row of x is rounded to int8 codes per
 * block of 32 inputs (one float scale per block, llama.cpp's Q8_1), the codes meet W's codes in integer dot
 * products (AVX-512 VNNI), and each block's integer sum is scaled in float32. aloekit compiles this file on first
 * use (aloekit/agents/backends/int8_dot.py); torch ships no such kernel for CPUs.
 *
 * W (N outputs, K inputs) is stored in groups of 16 outputs. Q4_1: for group g and block b, 256 bytes in which
 * byte t of lane c (0..15) of 64-byte chunk i holds W's codes for inputs 8i + t (low nibble) and 8i + 4 + t
 * (high nibble) of output 16g + c, so the chunk's low (high) nibbles are the multiplicands of VPDPBUSD against
 * the four codes of x at inputs 8i..8i+3 (8i+4..8i+7); and the block's float16 scales and minimums, 16 each.
 * Q8_0: 512 bytes, byte t of lane c of chunk j holding W's code for input 4j + t plus 128 (VPDPBUSD takes one
 * side unsigned; the 128s are taken off the integer sum, exactly), and the block's float16 scales.
 * Every output is computed from its own row of x alone, in a fixed order, so a row's result is the same alone
 * and in any batch. x and the result are bfloat16. */
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KERNEL __attribute__((target("avx512f,avx512bw,avx512vnni,f16c,fma")))
#define MAX_ROWS 8 /* rows multiplied together: their accumulators and the weights' 8 registers fit in 32 */

/* Four of x's int8 codes as one int32, broadcast against a register of weights by VPDPBUSD. */
static inline int32_t four_codes(const int8_t *codes)
{
    int32_t word;
    memcpy(&word, codes, sizeof word);
    return word;
}

int int8_dot_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
}

/* Each row's blocks of x as int8 codes (round to nearest even of x * 127 / max|x|), their scales (max|x| / 127),
 * the sums of their codes, and scale * sum (what Q4_1's minimums multiply). */
KERNEL static void quantize(int rows, int k, const uint16_t *x, int8_t *codes, float *scales, int32_t *code_sums,
                            float *sums)
{
    int blocks = k / 32;
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < blocks; b++) {
            size_t at = (size_t)r * k + (size_t)b * 32;
            __m512 v[2];
            for (int h = 0; h < 2; h++) {
                __m256i raw = _mm256_loadu_si256((const __m256i *)(x + at + 16 * h));
                v[h] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
            }
            float most = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
            if (_mm512_cmp_ps_mask(v[0], v[0], _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v[1], v[1], _CMP_UNORD_Q)
                || isinf(most))
                most = NAN; /* int8 codes hold no NaN or infinity (max drops NaNs): the row's results become NaN */
            /* 127 / most overflows for a block of tiny (subnormal) inputs: its codes are then 0 */
            __m512 inverse = _mm512_set1_ps(most > 127.0f / FLT_MAX ? 127.0f / most : 0.0f);
            __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v[0], inverse));
            __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v[1], inverse));
            _mm_storeu_si128((__m128i *)(codes + at), _mm512_cvtsepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(codes + at + 16), _mm512_cvtsepi32_epi8(q1));
            float scale = most / 127.0f;
            int32_t code_sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            scales[r * blocks + b] = scale;
            code_sums[r * blocks + b] = code_sum;
            sums[r * blocks + b] = scale * (float)code_sum;
        }
}

/* float32 -> bfloat16, rounding to nearest even as torch does. */
KERNEL static inline void store_bfloat16(uint16_t *out, __m512 v)
{
    __m512i bits = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    _mm256_storeu_si256((__m256i *)out, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
}

/* Q4_1 outputs 16g..16g+15 of `rows` rows (a constant where inlined, so the loops unroll into registers). */
KERNEL static inline __attribute__((always_inline)) void group4(
    int rows, int g, int blocks, int k, int n, const int8_t *codes, const float *scales, const float *sums,
    const uint8_t *w, const uint16_t *w_scales, const uint16_t *w_minimums, uint16_t *out)
{
    __m512 acc[MAX_ROWS];
    for (int r = 0; r < rows; r++) acc[r] = _mm512_setzero_ps();
    const __m512i low = _mm512_set1_epi8(0x0F);
    const uint8_t *wg = w + (size_t)g * blocks * 256;
    const uint16_t *sg = w_scales + (size_t)g * blocks * 16, *mg = w_minimums + (size_t)g * blocks * 16;
    for (int b = 0; b < blocks; b++) {
        __m512i wv[8];
        for (int i = 0; i < 4; i++) {
            __m512i both = _mm512_loadu_si512(wg + (size_t)b * 256 + i * 64);
            wv[2 * i] = _mm512_and_si512(both, low);
            wv[2 * i + 1] = _mm512_and_si512(_mm512_srli_epi16(both, 4), low);
        }
        __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sg + (size_t)b * 16)));
        __m512 minimum = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mg + (size_t)b * 16)));
        for (int r = 0; r < rows; r++) {
            const int8_t *xr = codes + (size_t)r * k + (size_t)b * 32;
            __m512i dot = _mm512_setzero_si512();
            for (int j = 0; j < 8; j++)
                dot = _mm512_dpbusd_epi32(dot, wv[j], _mm512_set1_epi32(four_codes(xr + 4 * j)));
            __m512 both_scales = _mm512_mul_ps(scale, _mm512_set1_ps(scales[r * blocks + b]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), both_scales, acc[r]);
            acc[r] = _mm512_fmadd_ps(minimum, _mm512_set1_ps(sums[r * blocks + b]), acc[r]);
        }
    }
    for (int r = 0; r < rows; r++) store_bfloat16(out + (size_t)r * n + (size_t)g * 16, acc[r]);
}

/* Q8_0 outputs 16g..16g+15 of `rows` rows, as group4. */
KERNEL static inline __attribute__((always_inline)) void group8(
    int rows, int g, int blocks, int k, int n, const int8_t *codes, const float *scales, const int32_t *code_sums,
    const uint8_t *w, const uint16_t *w_scales, uint16_t *out)
{
    __m512 acc[MAX_ROWS];
    for (int r = 0; r < rows; r++) acc[r] = _mm512_setzero_ps();
    const uint8_t *wg = w + (size_t)g * blocks * 512;
    const uint16_t *sg = w_scales + (size_t)g * blocks * 16;
    for (int b = 0; b < blocks; b++) {
        __m512i wv[8];
        for (int j = 0; j < 8; j++) wv[j] = _mm512_loadu_si512(wg + (size_t)b * 512 + j * 64);
        __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sg + (size_t)b * 16)));
        for (int r = 0; r < rows; r++) {
            const int8_t *xr = codes + (size_t)r * k + (size_t)b * 32;
            __m512i dot = _mm512_setzero_si512();
            for (int j = 0; j < 8; j++)
                dot = _mm512_dpbusd_epi32(dot, wv[j], _mm512_set1_epi32(four_codes(xr + 4 * j)));
            dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(128 * code_sums[r * blocks + b]));
            __m512 both_scales = _mm512_mul_ps(scale, _mm512_set1_ps(scales[r * blocks + b]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), both_scales, acc[r]);
        }
    }
    for (int r = 0; r < rows; r++) store_bfloat16(out + (size_t)r * n + (size_t)g * 16, acc[r]);
}

#define ROWS(R) \
    case R: \
        for (int g = first; g < last; g++) \
            if (bits == 4) group4(R, g, blocks, k, n, c, s, u, w, w_scales, w_minimums, o); \
            else group8(R, g, blocks, k, n, c, s, i, w, w_scales, o); \
        break;

/* out [rows, n] = x [rows, k] @ W.T for W of `bits`-bit codes (4: Q4_1, with minimums; 8: Q8_0, none) over
 * `threads` OpenMP threads (torch's team: the same runtime); 0, or 1 where memory for the codes could not be
 * had. */
KERNEL int int8_dot_matmul(int bits, int rows, int k, int n, const uint16_t *x, const uint8_t *w,
                           const uint16_t *w_scales, const uint16_t *w_minimums, uint16_t *out, int threads)
{
    int blocks = k / 32, groups = n / 16;
    size_t per_block = (size_t)rows * blocks;
    int8_t *codes = malloc((size_t)rows * k + (2 * sizeof(float) + sizeof(int32_t)) * per_block);
    if (codes == NULL) return 1;
    float *scales = (float *)(codes + (size_t)rows * k), *sums = scales + per_block;
    int32_t *code_sums = (int32_t *)(sums + per_block);
    quantize(rows, k, x, codes, scales, code_sums, sums);
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), team = omp_get_num_threads();
        int first = (int)((long)groups * t / team), last = (int)((long)groups * (t + 1) / team);
        for (int r0 = 0; r0 < rows; r0 += MAX_ROWS) {
            const int8_t *c = codes + (size_t)r0 * k;
            const float *s = scales + (size_t)r0 * blocks, *u = sums + (size_t)r0 * blocks;
            const int32_t *i = code_sums + (size_t)r0 * blocks;
            uint16_t *o = out + (size_t)r0 * n;
            switch (rows - r0 < MAX_ROWS ? rows - r0 : MAX_ROWS) {
                ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6) ROWS(7) ROWS(8)
            }
        }
    }
    free(codes);
    return 0;
}
