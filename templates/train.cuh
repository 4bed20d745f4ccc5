// Training: the global gradient norm and the optimizer update of one parameter, as
// the CPU backend's compiler/cpu/train.c computes them.
// Uses kiln_block_sum_f64 (reduce.cuh).

// sqrt of a double with double arithmetic only: sqrtf's estimate (the sum scaled
// by powers of 4 into f32's range first) refined by two Newton steps, each of
// which doubles the correct digits.
__device__ __forceinline__ double kiln_sqrt_f64(double t) {
  if (t == 0.0 || !(t < (double)KILN_INF)) return (double)sqrtf((float)t);  // 0, inf, NaN
  double up = 1.0;
  while (t > 1e30) t *= 0x1p-100, up *= 0x1p50;
  while (t < 1e-30) t *= 0x1p100, up *= 0x1p-50;
  double r = (double)sqrtf((float)t);
  r = 0.5 * (r + t / r);
  r = 0.5 * (r + t / r);
  return r * up;
}

// Thread t's share of the sum of squares of N floats, in double.
template <long long N>
__device__ __forceinline__ double kiln_sumsq(const float *x) {
  double s = 0.0;
  for (long long i = threadIdx.x; i < N; i += blockDim.x) {
    double v = x[i];
    s += v * v;
  }
  return s;
}

// With the block's partial sums of squares: header.grad_norm = the norm and
// header.grad_scale = min(1, clip / (norm + 1e-6)) (PyTorch's clip_grad_norm_),
// 1 without clipping (clip 0).
__device__ __forceinline__ void kiln_norm_finish(const KilnArgs &A, double s, double clip) {
  s = kiln_block_sum_f64(s);
  if (threadIdx.x != 0) return;
  KilnStepHeader *h = kiln_header(A);
  double norm = kiln_sqrt_f64(s), scale = 1.0;
  if (clip > 0) {
    double c = clip / (norm + 1e-6);
    scale = c < 1.0 ? c : 1.0;
  }
  h->grad_norm = norm;
  h->grad_scale = (float)scale;
}

// One parameter's update over its N elements, as PyTorch's optimizers:
//   g = grad * scale (+ wd * p for sgd and adam: L2 in the gradient)
//   sgd:   v = mu v + g;  g = nesterov ? g + mu v : v  (when mu > 0);  p -= lr g
//   adam:  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//          p -= (lr / bias1) m / (sqrt(v) / sqrt(bias2) + eps)   (adamw: also p -= lr wd p)
// lr, scale, bias1 and bias2 come from the step header; lr / bias1, 1 / sqrt(bias2)
// and lr wd are computed in double and rounded once, as on the CPU. wd, mu, b1,
// 1 - b1, b2, 1 - b2, eps are rounded to f32 as the CPU backend rounds them; wd64 is
// the unrounded weight decay.
enum { KILN_OPT_SGD, KILN_OPT_ADAM, KILN_OPT_ADAMW };

template <long long N, int OPT, bool L2, bool MOMENTUM, bool NESTEROV, bool DECAY>
__device__ __forceinline__ void kiln_update(const KilnArgs &A, float *__restrict__ p,
                                            const float *__restrict__ grad, float *__restrict__ s0,
                                            float *__restrict__ s1, float wd, float mu, float b1,
                                            float nb1, float b2, float nb2, float eps, double wd64) {
  const KilnStepHeader *h = kiln_header(A);
  float lr = h->lr, scale = h->grad_scale;
  float step = (float)((double)lr / (double)h->bias1);
  float inv_sqrt_b2 = (float)(1.0 / kiln_sqrt_f64((double)h->bias2));
  float decay = (float)((double)lr * wd64);
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N;
       i += (long long)gridDim.x * blockDim.x) {
    float pv = p[i], g = grad[i] * scale, upd;
    if (L2) g = g + wd * pv;
    if (OPT == KILN_OPT_SGD) {
      upd = g;
      if (MOMENTUM) {
        float v = mu * s0[i] + g;
        s0[i] = v;
        upd = NESTEROV ? g + mu * v : v;
      }
    } else {
      float m = b1 * s0[i] + nb1 * g;
      float v = b2 * s1[i] + nb2 * (g * g);
      s0[i] = m;
      s1[i] = v;
      upd = step * (m / (sqrtf(v) * inv_sqrt_b2 + eps));  // lr times the update
      if (DECAY) upd = upd + decay * pv;
    }
    if (OPT == KILN_OPT_SGD) upd = lr * upd;
    p[i] = pv - upd;
  }
}
