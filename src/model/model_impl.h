/* Internal to the model/ layer. */
#ifndef LOOM_MODEL_IMPL_H
#define LOOM_MODEL_IMPL_H
#include "loom/model.h"

/* Allocates the layout and an uninitialised parameter buffer. */
int loom_model_alloc(loom_model **out, const loom_config *cfg);

#endif
