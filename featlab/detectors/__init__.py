"""Layer 4, detectors: model folders that turn features or pixels into a "fake" score.

modelfile (sealed model folders, loaded without running code), classical (StandardScaler -> PCA -> SVM),
streaming (its out-of-core fit), svm (SVM model folders), oneclass (one-class detectors on embeddings), cnn
(fine-tuned CNN baselines), autoencoder, pixel (the kinds scored from pixels: CNN and autoencoder), adversarial
(L-inf attacks and adversarial training) and detector (a model folder as a function of pixels, with the SVM's
differentiable torch copy).
"""
