/* Privacy audits (privacy/ layer): the statistics of membership inference and canary exposure.
 *
 * Pure functions over scores; the CLI (`loom audit`) computes the scores from a model.
 *
 * Membership inference. Each example gets a score, higher meaning "more likely a training member":
 * the loss-threshold attack scores -loss (Yeom et al. 2018), the reference-calibrated attack scores
 * loss_ref - loss_target (Carlini et al. 2022, Watson et al. 2022). From the scores of known members
 * (positives) and known non-members (negatives):
 *   - ROC AUC, exact: the probability that a random member outscores a random non-member, ties
 *     counted one half, i.e. (sum over members of their mid-rank among all scores - P(P+1)/2) / (P N)
 *     (the Mann-Whitney U statistic divided by P N). 0.5 is chance.
 *   - TPR at FPR alpha: the attack says "member" when score >= tau. Over the thresholds tau that the
 *     scores define (a threshold takes all tied scores or none, no randomisation), the largest true-
 *     positive rate whose false-positive rate #{neg >= tau} / N is at most alpha; tau = +inf (0, 0) is
 *     always allowed. This is the empirical ROC curve read without interpolation (the conservative
 *     convention): with N non-members the reachable false-positive rates are multiples of 1 / N, so
 *     at alpha = 1% fewer than 100 non-members give the TPR at FPR 0.
 *
 * Canary exposure (Carlini et al. 2019, "The Secret Sharer"): a canary s drawn at random from a space
 * R of same-format strings is inserted into training data; with px the model's log-perplexity
 * (negative log-likelihood of the whole string, lower = more likely),
 *     exposure(s) = log2 |R| - log2 rank(s),  rank(s) = position of px(s) among px(r), r in R (1 = best).
 * loom ranks the canary among K candidates drawn uniformly from R (or all of R \ {s} when K >= |R| - 1):
 *     rank = 1 + #{c : px(c) < px(s)} + #{c : px(c) = px(s)} / 2        (ties counted one half)
 *     exposure = log2(K + 1) - log2(rank)
 * which is the formula above with |R|'s rank estimated as rank * |R| / (K + 1) (exact when all of R is
 * enumerated). It lies in [0, log2(K + 1)]; a canary the model has not learned has an expected
 * exposure near log2(e) ~ 1.44 bits (a uniform rank), one it has memorised log2(K + 1).
 *
 * Canary formats: a template whose '#' characters are the secret's decimal digits, e.g.
 * "my secret code is # # # # # #" (|R| = 10^6). Candidate v in [0, 10^digits) fills the '#'s with v's
 * digits, most significant first. */
#ifndef LOOM_AUDIT_H
#define LOOM_AUDIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Random streams of the audits (kept beside the registry of loom/streams.h, ids unused there). */
#define LOOM_STREAM_AUDIT_CANARY UINT64_C(0x636e7279)    /* "cnry": the canaries' secrets, (seed, id) */
#define LOOM_STREAM_AUDIT_CANDIDATE UINT64_C(0x63616e64) /* "cand": exposure's random candidates, (seed, id) */

/* ROC AUC of member scores pos[np] against non-member scores neg[nn] (see above). Scores must be
 * finite and both sets non-empty: otherwise LOOM_EINVAL naming the problem. */
int loom_audit_auc(const double *pos, size_t np, const double *neg, size_t nn, double *auc);

/* TPR at FPR <= alpha (see above), alpha in [0, 1]. *threshold (may be NULL) receives the threshold
 * used (+inf when none is allowed), *fpr (may be NULL) the false-positive rate it reaches. */
int loom_audit_tpr_at_fpr(const double *pos, size_t np, const double *neg, size_t nn, double alpha, double *tpr,
                          double *fpr, double *threshold);

/* Exposure of a canary of log-perplexity canary_px among cand_px[k] candidates (see above); *rank
 * (may be NULL) receives its rank. k = 0 is allowed (exposure 0). Non-finite values: LOOM_EINVAL. */
int loom_audit_exposure(double canary_px, const double *cand_px, size_t k, double *exposure, double *rank);

/* Canary formats. Maximum '#' digits in a format (10^18 < 2^63). */
#define LOOM_AUDIT_MAX_DIGITS 18
/* Number of '#' in fmt; LOOM_EINVAL when there is none, more than LOOM_AUDIT_MAX_DIGITS, or the format
 * holds a line break or a NUL-free length above 4096 bytes. *space = 10^digits (may be NULL). */
int loom_audit_format_check(const char *fmt, int *digits, uint64_t *space);
/* Writes the string of candidate v (v < space) into out[cap] (NUL-terminated; LOOM_ERANGE when it
 * does not fit). */
int loom_audit_format_fill(const char *fmt, uint64_t v, char *out, size_t cap);
/* The candidate number of a string of this format, or LOOM_EFORMAT when s does not match it. */
int loom_audit_format_parse(const char *fmt, const char *s, uint64_t *v);
/* n distinct secrets drawn uniformly from [0, space) by the stream (seed, LOOM_STREAM_AUDIT_CANARY), in
 * draw order; n must be at most space / 2 (LOOM_EINVAL otherwise). */
int loom_audit_canary_draw(uint64_t seed, uint64_t space, size_t n, uint64_t *out);
/* Candidate j of the stream (seed, LOOM_STREAM_AUDIT_CANDIDATE): uniform in [0, space) by rejection, a
 * pure function of (seed, j). */
uint64_t loom_audit_candidate(uint64_t seed, uint64_t space, uint64_t j);

#ifdef __cplusplus
}
#endif
#endif
