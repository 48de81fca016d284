"""Layer 4, detectors: model folders that turn features or pixels into a "fake" score.

base (the Detector every command uses, ``featlab.load`` and the registry of kinds), features_detector (kinds svm
and oneclass: backbone features -> scikit-learn pipeline), network_detector (kinds cnn and ae: one network),
configs (the self-validating fit and training settings), modelfile (sealed model folders, loaded without running
code), classical (StandardScaler -> PCA -> SVM), streaming (its out-of-core fit), svm (SVM model folders),
oneclass (one-class detectors on embeddings), cnn (fine-tuned CNN baselines), autoencoder, pixel (a pixel model
loaded by path, for Ray actors), torchcopy (the fitted pipeline as a differentiable torch function), adversarial
(L-inf attacks and adversarial training) and detector (featlab 0.2's load_detector).
"""
