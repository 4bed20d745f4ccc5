// Embedding a Kiln-compiled model in a C program. Build the library first:
//
//   kiln build ../../models/mlp.yaml --emit=lib -o out/mlp
//   cc -o classify main.c $(PKG_CONFIG_PATH=out pkg-config --cflags --libs mlp)
//
// Usage: classify [-w WEIGHTS.safetensors] [-s SAVE.safetensors] INPUT.csv
// Reads rows of 5 features, classifies them a batch at a time, prints each row's
// two logits and the predicted class. -w loads weights first (else they are
// initialized from the model's seed); -s saves the weights used.
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mlp.h"

enum { FEATURES = MLP_X_SIZE / MLP_LOGITS_SIZE * 2 };

int main(int argc, char **argv) {
  const char *load = NULL, *save = NULL;
  for (int c; (c = getopt(argc, argv, "w:s:")) != -1;) {
    if (c == 'w') load = optarg;
    else if (c == 's') save = optarg;
    else return 2;
  }
  if (optind != argc - 1) {
    fprintf(stderr, "usage: %s [-w WEIGHTS] [-s SAVE] INPUT.csv\n", argv[0]);
    return 2;
  }
  mlp_ctx *m = mlp_create(1);
  if (!m) {
    fprintf(stderr, "mlp_create: %s\n", mlp_last_error(NULL));
    return 1;
  }
  if ((load && mlp_load_weights(m, load) != 0) || (save && mlp_save_weights(m, save) != 0)) {
    fprintf(stderr, "%s\n", mlp_last_error(m));
    return 1;
  }
  FILE *f = fopen(argv[optind], "r");
  if (!f) {
    perror(argv[optind]);
    return 1;
  }
  static const int64_t xshape[] = MLP_X_SHAPE;
  const int batch = (int)xshape[0], features = (int)xshape[1];
  float x[MLP_X_SIZE], logits[MLP_LOGITS_SIZE];
  int rows = 0, done = 0;
  for (;;) {
    // Fill one batch; a short last batch is padded with zeros and its padding
    // rows are not printed.
    memset(x, 0, sizeof x);
    for (rows = 0; rows < batch; rows++) {
      int got = 0;
      for (int j = 0; j < features; j++) got += fscanf(f, " %f ,", &x[rows * features + j]);
      if (got != features) break;
    }
    if (rows == 0) break;
    if (mlp_forward(m, x, logits) != 0) {
      fprintf(stderr, "%s\n", mlp_last_error(m));
      return 1;
    }
    for (int i = 0; i < rows; i++)
      printf("%.9g,%.9g,%d\n", logits[2 * i], logits[2 * i + 1], logits[2 * i + 1] > logits[2 * i]);
    done += rows;
    if (rows < batch) break;
  }
  fclose(f);
  fprintf(stderr, "classified %d rows\n", done);
  mlp_destroy(m);
  return 0;
}
