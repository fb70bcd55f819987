"""Inputs to items: parse the wire `input`, fetch URLs behind the guard, decode images and videos."""
