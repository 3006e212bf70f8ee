"""The seed's MNIST network (``../shared/seed/``): 19,344 parameters, global RF on 28x28."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """Five 3x3 conv blocks (conv -> BatchNorm -> ReLU -> Dropout), three max pools, a 1x1 conv to
    the 10 class scores, global average pooling and ``log_softmax`` for the NLL loss.

    The seed states ~18,746 parameters; its own layer list has 19,344 (conv weights and biases
    plus BatchNorm affine parameters), which is what this class has.
    """

    def __init__(self, dropout_scale: float = 1.0, logit_relu: bool = False) -> None:
        """``dropout_scale`` multiplies the seed's rates (0 turns dropout off); ``logit_relu``
        adds the ReLU that a literal reading of "conv -> BN -> ReLU" puts on the class scores."""
        super().__init__()
        self.logit_relu = logit_relu

        def dropout(rate: float) -> nn.Dropout:
            return nn.Dropout(rate * dropout_scale)

        self.conv0 = nn.Conv2d(1, 4, kernel_size=3, padding=1)
        self.bn0 = nn.BatchNorm2d(4)
        self.dropout0 = dropout(0.15)

        self.conv1 = nn.Conv2d(4, 8, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dropout1 = dropout(0.125)
        self.maxpool1 = nn.MaxPool2d(kernel_size=2, stride=2)

        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.dropout2 = dropout(0.1)

        self.conv3 = nn.Conv2d(16, 22, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(22)
        self.dropout3 = dropout(0.1)
        self.maxpool2 = nn.MaxPool2d(kernel_size=2, stride=2)

        self.conv4 = nn.Conv2d(22, 30, kernel_size=3)
        self.bn_conv4 = nn.BatchNorm2d(30)
        self.dropout_conv4 = dropout(0.1)

        self.conv5 = nn.Conv2d(30, 30, kernel_size=3)
        self.bn5 = nn.BatchNorm2d(30)
        self.dropout5 = dropout(0.1)
        self.maxpool3 = nn.MaxPool2d(kernel_size=2, stride=2, padding=1)

        self.conv1x1_reduce_1 = nn.Conv2d(30, 10, kernel_size=1)
        self.bn_conv1x1_reduce_1 = nn.BatchNorm2d(10)
        self.dropout_conv1x1_reduce_1 = dropout(0.1)

        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout0(F.relu(self.bn0(self.conv0(x))))
        x = self.dropout1(F.relu(self.bn1(self.conv1(x))))
        x = self.maxpool1(x)
        x = self.dropout2(F.relu(self.bn2(self.conv2(x))))
        x = self.dropout3(F.relu(self.bn3(self.conv3(x))))
        x = self.maxpool2(x)
        x = self.dropout_conv4(F.relu(self.bn_conv4(self.conv4(x))))
        x = self.dropout5(F.relu(self.bn5(self.conv5(x))))
        x = self.maxpool3(x)
        x = self.bn_conv1x1_reduce_1(self.conv1x1_reduce_1(x))
        x = self.dropout_conv1x1_reduce_1(F.relu(x) if self.logit_relu else x)
        x = self.dropout(self.gap(x))
        return F.log_softmax(x.flatten(1), dim=1)
