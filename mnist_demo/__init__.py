"""The reference workload: the seed's MNIST CNN, trained offline with every probe attached."""
