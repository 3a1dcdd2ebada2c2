/* Run-time CPU dispatch for loom's element-wise kernels (private to the library): LOOM_DISPATCH marks a
 * function the compiler builds for AVX-512, AVX2 and baseline x86-64, the loader picking the version the
 * CPU runs. Element-wise arithmetic without contraction and fixed-lane reductions give the same bits in
 * each version. Keep OpenMP outside such functions (a parallel body would not be cloned). */
#ifndef LOOM_DISPATCH_H
#define LOOM_DISPATCH_H
/* Only for a portable build: one that already targets AVX2 or more (-march=native) is tuned for its
 * machine, and cloning there would keep the inline helpers, built for the wider native ISA, out of the
 * clones. A ThreadSanitizer build cannot run the loader-time resolvers. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__AVX2__) && defined(__has_attribute)
#if __has_attribute(target_clones) && !defined(__SANITIZE_THREAD__)
#define LOOM_DISPATCH __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#ifndef LOOM_DISPATCH
#define LOOM_DISPATCH
#endif
#endif
