"""The `calc` MCP server: arithmetic without eval, and unit conversion.

Expressions are parsed with `ast` and only whitelisted nodes are evaluated: numbers, + - * / // % **,
unary signs, parentheses, a list of math functions and the constants pi, e, tau. Nothing is ever
passed to eval/exec. Integer arithmetic stays exact ("17*23" is 391, "2**100" is all 31 digits);
results that would be absurdly large (9**9**9) are refused before they are computed.
"""

from __future__ import annotations

import argparse
import ast
import math
from collections.abc import Callable
from typing import Annotated

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)

MAX_EXPRESSION_CHARS = 1000
MAX_DEPTH = 60  # nesting of operators and calls
MAX_DIGITS = 4000  # integer results; Python itself refuses to print ints over 4300 digits
MAX_FACTORIAL = 1000

Number = int | float


class CalcError(ValueError):
    """An expression or conversion the calculator will not evaluate; the message says why."""


# ----------------------------------------------------------------------------------------- expressions


def _digits(value: int) -> float:
    """Roughly how many decimal digits |value| has."""
    return value.bit_length() * math.log10(2)


def _check_int(value: int) -> int:
    if _digits(value) > MAX_DIGITS:
        raise CalcError(f"the result would have about {_digits(value):,.0f} digits; the limit is {MAX_DIGITS}")
    return value


def _check(value: Number) -> Number:
    if isinstance(value, complex):
        raise CalcError("the result is not a real number (for example a negative number to a fractional power)")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalcError("the result is too large (or not a finite number)")
    if isinstance(value, int):
        return _check_int(value)
    return value


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(base, int) and isinstance(exponent, int) and exponent >= 0:
        if abs(base) > 1:
            digits = exponent * math.log10(abs(base))
            if digits > MAX_DIGITS:
                raise CalcError(
                    f"{base}**{exponent} would have about {digits:,.0f} digits; the limit is {MAX_DIGITS}"
                )
        return base**exponent
    if base == 0 and exponent < 0:
        raise CalcError("division by zero (0 to a negative power)")
    if base < 0 and not float(exponent).is_integer():
        raise CalcError("a negative number to a fractional power has no real result")
    return float(base) ** exponent


def _divide(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalcError("division by zero")
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b  # exact: 10/2 is 5, not 5.0
    return a / b


def _multiply(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int) and _digits(a) + _digits(b) > MAX_DIGITS + 1:
        raise CalcError(f"the product would have about {_digits(a) + _digits(b):,.0f} digits; the limit is {MAX_DIGITS}")
    return a * b


def _floordiv(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalcError("division by zero")
    return a // b


def _mod(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalcError("modulo by zero")
    return a % b


BINARY: dict[type, Callable[[Number, Number], Number]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: _multiply,
    ast.Div: _divide,
    ast.FloorDiv: _floordiv,
    ast.Mod: _mod,
    ast.Pow: _power,
}


def _factorial(n: Number) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalcError("factorial needs a whole number >= 0")
    if n > MAX_FACTORIAL:
        raise CalcError(f"factorial({n}) is too large; the limit is factorial({MAX_FACTORIAL})")
    return math.factorial(n)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int):
        raise CalcError("round's second argument (decimal places) must be a whole number")
    if abs(ndigits) > MAX_DIGITS:  # round(5, -10**9) would build a 10**9-digit power of ten first
        raise CalcError(f"round to at most {MAX_DIGITS} decimal places either way (got {ndigits})")
    return round(x, ndigits)


def _int_args(name: str, fn: Callable[..., int]) -> Callable[..., int]:
    def call(*args: Number) -> int:
        if not all(isinstance(a, int) for a in args):
            raise CalcError(f"{name} needs whole numbers")
        return fn(*args)
    return call


# name -> (function, fewest arguments, most arguments; None: any number)
FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int | None]] = {
    "sqrt": (math.sqrt, 1, 1), "cbrt": (math.cbrt, 1, 1), "exp": (math.exp, 1, 1),
    "log": (math.log, 1, 2), "ln": (math.log, 1, 1), "log10": (math.log10, 1, 1), "log2": (math.log2, 1, 1),
    "sin": (math.sin, 1, 1), "cos": (math.cos, 1, 1), "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1), "acos": (math.acos, 1, 1), "atan": (math.atan, 1, 1), "atan2": (math.atan2, 2, 2),
    "sinh": (math.sinh, 1, 1), "cosh": (math.cosh, 1, 1), "tanh": (math.tanh, 1, 1),
    "degrees": (math.degrees, 1, 1), "radians": (math.radians, 1, 1), "hypot": (math.hypot, 1, None),
    "abs": (abs, 1, 1), "round": (_round, 1, 2), "floor": (math.floor, 1, 1), "ceil": (math.ceil, 1, 1),
    "min": (min, 1, None), "max": (max, 1, None), "factorial": (_factorial, 1, 1),
    "gcd": (_int_args("gcd", math.gcd), 1, None), "lcm": (_int_args("lcm", math.lcm), 1, None),
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
SUPPORTED = (
    "numbers, + - * / // % ** (power), unary -, parentheses, the functions "
    + ", ".join(sorted(FUNCTIONS)) + " and the constants " + ", ".join(CONSTANTS)
)


def _depth(tree: ast.AST) -> int:
    """Nesting depth of the tree, without recursion (the tree may be deep on purpose)."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalcError(f"{node.value!r} is not a number; supported: {SUPPORTED}")
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.BitXor):
            raise CalcError("'^' is not a power here; write powers with ** (for example 2**10)")
        op = BINARY.get(type(node.op))
        if op is None:
            raise CalcError(f"the operator {type(node.op).__name__} is not supported; supported: {SUPPORTED}")
        return _check(op(_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        if node.id in FUNCTIONS:
            raise CalcError(f"{node.id} is a function; call it with parentheses, e.g. {node.id}(2)")
        raise CalcError(f"unknown name '{node.id}'; supported: {SUPPORTED}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise CalcError(f"only the listed functions can be called, not '{ast.unparse(node.func)}'; supported: {SUPPORTED}")
        name = node.func.id
        if name not in FUNCTIONS:
            raise CalcError(f"unknown function '{name}'; supported: {SUPPORTED}")
        if node.keywords:
            raise CalcError(f"{name} takes positional arguments only")
        fn, fewest, most = FUNCTIONS[name]
        if len(node.args) < fewest or (most is not None and len(node.args) > most):
            wanted = str(fewest) if fewest == most else f"{fewest} or more" if most is None else f"{fewest} to {most}"
            raise CalcError(f"{name} takes {wanted} argument(s), got {len(node.args)}")
        args = [_eval(arg) for arg in node.args]
        try:
            return _check(fn(*args))
        except CalcError:
            raise
        except ZeroDivisionError:
            raise CalcError(f"division by zero in {name}") from None
        except (ValueError, TypeError):
            shown = ", ".join(repr(a) for a in args)
            raise CalcError(f"{name}({shown}) is undefined (outside the function's domain)") from None
    raise CalcError(f"{type(node).__name__} is not allowed in an expression; supported: {SUPPORTED}")


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression; raises CalcError with a clear message for anything else."""
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    if not text:
        raise CalcError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalcError(f"the expression is {len(text)} characters long; the limit is {MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalcError(f"cannot parse {text!r}: {exc.msg} (column {exc.offset})") from None
    except (ValueError, RecursionError, MemoryError):
        raise CalcError(f"cannot parse {text!r}") from None
    if _depth(tree) > MAX_DEPTH:
        raise CalcError(f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
    try:
        return _check(_eval(tree))
    except OverflowError:
        raise CalcError("a number in the calculation is too large") from None
    except ZeroDivisionError:
        raise CalcError("division by zero") from None


def format_number(value: Number) -> str:
    """Integers in full; floats to 15 significant digits, so 0.1+0.2 shows as 0.3."""
    if isinstance(value, int):
        return str(value)
    return f"{value:.15g}"


# ----------------------------------------------------------------------------------------- units

# quantity -> {unit symbol: (size in the quantity's base unit, aliases)}; temperatures are handled apart.
LINEAR_UNITS: dict[str, dict[str, tuple[float, tuple[str, ...]]]] = {
    "length": {
        "m": (1.0, ("meter", "meters", "metre", "metres")),
        "km": (1e3, ("kilometer", "kilometers", "kilometre", "kilometres")),
        "cm": (1e-2, ("centimeter", "centimeters", "centimetre", "centimetres")),
        "mm": (1e-3, ("millimeter", "millimeters", "millimetre", "millimetres")),
        "um": (1e-6, ("µm", "micrometer", "micrometers", "micron", "microns")),
        "nm": (1e-9, ("nanometer", "nanometers")),
        "in": (0.0254, ("inch", "inches")),
        "ft": (0.3048, ("foot", "feet")),
        "yd": (0.9144, ("yard", "yards")),
        "mi": (1609.344, ("mile", "miles")),
        "nmi": (1852.0, ("nautical mile", "nautical miles")),
    },
    "mass": {
        "kg": (1.0, ("kilogram", "kilograms", "kilo", "kilos")),
        "g": (1e-3, ("gram", "grams")),
        "mg": (1e-6, ("milligram", "milligrams")),
        "ug": (1e-9, ("µg", "mcg", "microgram", "micrograms")),
        "t": (1e3, ("tonne", "tonnes", "metric ton", "metric tons")),
        "lb": (0.45359237, ("lbs", "pound", "pounds")),
        "oz": (0.028349523125, ("ounce", "ounces")),
        "st": (6.35029318, ("stone", "stones")),
    },
    "time": {
        "s": (1.0, ("sec", "secs", "second", "seconds")),
        "ms": (1e-3, ("millisecond", "milliseconds")),
        "us": (1e-6, ("µs", "microsecond", "microseconds")),
        "ns": (1e-9, ("nanosecond", "nanoseconds")),
        "min": (60.0, ("mins", "minute", "minutes")),
        "h": (3600.0, ("hr", "hrs", "hour", "hours")),
        "d": (86400.0, ("day", "days")),
        "wk": (604800.0, ("week", "weeks")),
        "month": (2629800.0, ("months",)),  # a twelfth of a Julian year (30.44 days)
        "yr": (31557600.0, ("year", "years")),  # Julian year, 365.25 days
    },
    "volume": {
        "m3": (1.0, ("cubic meter", "cubic meters")),
        "L": (1e-3, ("l", "liter", "liters", "litre", "litres")),
        "dL": (1e-4, ("dl",)),
        "cL": (1e-5, ("cl",)),
        "mL": (1e-6, ("ml", "milliliter", "milliliters", "millilitre", "millilitres")),
        "cm3": (1e-6, ("cc",)),
        "in3": (1.6387064e-5, ("cubic inch", "cubic inches")),
        "ft3": (0.028316846592, ("cubic foot", "cubic feet")),
        "gal": (3.785411784e-3, ("gallon", "gallons", "us gallon", "us gallons")),
        "qt": (9.46352946e-4, ("quart", "quarts")),
        "pt": (4.73176473e-4, ("pint", "pints")),
        "cup": (2.365882365e-4, ("cups",)),
        "fl_oz": (2.95735295625e-5, ("fl oz", "floz", "fluid ounce", "fluid ounces")),
        "tbsp": (1.478676478125e-5, ("tablespoon", "tablespoons")),
        "tsp": (4.92892159375e-6, ("teaspoon", "teaspoons")),
        "imp_gal": (4.54609e-3, ("imperial gallon", "imperial gallons")),
    },
    "speed": {
        "m/s": (1.0, ("mps", "meters per second")),
        "km/h": (1 / 3.6, ("kph", "kmh", "kmph", "kilometers per hour")),
        "mph": (0.44704, ("mi/h", "miles per hour")),
        "kn": (1852 / 3600, ("kt", "knot", "knots")),
        "ft/s": (0.3048, ("fps", "feet per second")),
    },
    "area": {
        "m2": (1.0, ("square meter", "square meters", "sq m")),
        "km2": (1e6, ("square kilometer", "square kilometers", "sq km")),
        "cm2": (1e-4, ("square centimeter", "square centimeters")),
        "mm2": (1e-6, ("square millimeter", "square millimeters")),
        "ha": (1e4, ("hectare", "hectares")),
        "acre": (4046.8564224, ("acres", "ac")),
        "in2": (6.4516e-4, ("square inch", "square inches", "sq in")),
        "ft2": (0.09290304, ("square foot", "square feet", "sq ft")),
        "yd2": (0.83612736, ("square yard", "square yards", "sq yd")),
        "mi2": (2589988.110336, ("square mile", "square miles", "sq mi")),
    },
    "data": {
        "bit": (0.125, ("bits", "b")),
        "kbit": (125.0, ("kilobit", "kilobits")),
        "Mbit": (125e3, ("megabit", "megabits")),
        "Gbit": (125e6, ("gigabit", "gigabits")),
        "B": (1.0, ("byte", "bytes")),
        "kB": (1e3, ("kilobyte", "kilobytes")),
        "MB": (1e6, ("megabyte", "megabytes")),
        "GB": (1e9, ("gigabyte", "gigabytes")),
        "TB": (1e12, ("terabyte", "terabytes")),
        "PB": (1e15, ("petabyte", "petabytes")),
        "KiB": (1024.0, ("kibibyte", "kibibytes")),
        "MiB": (1024.0**2, ("mebibyte", "mebibytes")),
        "GiB": (1024.0**3, ("gibibyte", "gibibytes")),
        "TiB": (1024.0**4, ("tebibyte", "tebibytes")),
        "PiB": (1024.0**5, ("pebibyte", "pebibytes")),
    },
}
# Temperatures: kelvin = scale * value + offset.
TEMPERATURES: dict[str, tuple[float, float, tuple[str, ...]]] = {
    "C": (1.0, 273.15, ("°C", "degC", "celsius", "centigrade")),
    "F": (5 / 9, 273.15 - 32 * 5 / 9, ("°F", "degF", "fahrenheit")),
    "K": (1.0, 0.0, ("kelvin", "kelvins")),
}


def _unit_index() -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """(exact spelling -> (quantity, symbol), lower-cased spelling -> same, ambiguous ones left out)."""
    exact: dict[str, tuple[str, str]] = {}
    for quantity, units in LINEAR_UNITS.items():
        for symbol, (_, aliases) in units.items():
            for spelling in (symbol, *aliases):
                exact[spelling] = (quantity, symbol)
            if symbol[-1] in "23" and not symbol.endswith("/s"):
                power = symbol[-1]
                for mark in ("^" + power, "²" if power == "2" else "³"):
                    exact[symbol[:-1] + mark] = (quantity, symbol)
    for symbol, (_, _, aliases) in TEMPERATURES.items():
        for spelling in (symbol, *aliases):
            exact[spelling] = ("temperature", symbol)
    folded: dict[str, tuple[str, str]] = {}
    clashes: set[str] = set()
    for spelling, target in exact.items():
        key = spelling.lower()
        if key in folded and folded[key] != target:
            clashes.add(key)
        folded[key] = target
    for key in clashes:
        del folded[key]
    return exact, folded


_EXACT, _FOLDED = _unit_index()


def known_units() -> dict[str, list[str]]:
    table = {quantity: list(units) for quantity, units in LINEAR_UNITS.items()}
    table["temperature"] = list(TEMPERATURES)
    return table


def _known_units_text() -> str:
    return "; ".join(f"{quantity}: {', '.join(units)}" for quantity, units in known_units().items())


def _lookup(unit: str) -> tuple[str, str]:
    spelling = " ".join(unit.strip().split())
    found = _EXACT.get(spelling) or _FOLDED.get(spelling.lower())
    if found is None:
        raise CalcError(f"unknown unit '{unit}'; known units: {_known_units_text()}")
    return found


def convert(value: float, from_unit: str, to_unit: str) -> tuple[float, str, str, str]:
    """(converted value, quantity, from symbol, to symbol); raises CalcError for unknown or mismatched units."""
    from_quantity, source = _lookup(from_unit)
    to_quantity, target = _lookup(to_unit)
    if from_quantity != to_quantity:
        raise CalcError(
            f"cannot convert {source} ({from_quantity}) to {target} ({to_quantity}); "
            f"{from_quantity} units are: {', '.join(known_units()[from_quantity])}"
        )
    if not math.isfinite(value):
        raise CalcError("the value must be a finite number")
    if from_quantity == "temperature":
        scale, offset, _ = TEMPERATURES[source]
        kelvin = scale * value + offset
        if kelvin < -1e-9:
            raise CalcError(f"{format_number(value)} {source} is below absolute zero (0 K)")
        scale, offset, _ = TEMPERATURES[target]
        result = (kelvin - offset) / scale
    else:
        units = LINEAR_UNITS[from_quantity]
        result = value * units[source][0] / units[target][0]
    if result != 0:  # drop float noise like 211.99999999999997
        result = float(f"{result:.12g}")
    return result, from_quantity, source, target


# ----------------------------------------------------------------------------------------- server


class Calculation(BaseModel):
    expression: str
    result: int | float = Field(description="the value; integers are exact")
    text: str = Field(description="the value as text (floats to 15 significant digits)")


class Conversion(BaseModel):
    value: float
    from_unit: str
    to_unit: str
    quantity: str = Field(description="length, mass, time, volume, speed, area, data or temperature")
    result: float
    text: str = Field(description="the conversion as a sentence, e.g. '100 C = 212 F'")


def build_server() -> FastMCP:
    server = FastMCP(
        "calc",
        instructions="Exact arithmetic and unit conversion. Use it instead of doing arithmetic in your head.",
        log_level="WARNING",
    )

    @server.tool(annotations=READ_ONLY)
    def calculate(
        expression: Annotated[str, Field(description=(
            "arithmetic expression, e.g. '17*23', '(2+3)**2 / 7', 'sqrt(2)*pi', 'log(8, 2)'. "
            "Powers are written ** (not ^)."
        ))],
    ) -> Calculation:
        """Evaluate an arithmetic expression exactly (integers stay exact, e.g. 2**100 in full).

        Supports numbers, + - * / // (floor division) % (remainder) ** (power), unary minus,
        parentheses, the functions sqrt cbrt exp log(x[, base]) ln log10 log2 sin cos tan asin acos
        atan atan2 sinh cosh tanh degrees radians hypot abs round(x[, digits]) floor ceil min max
        factorial gcd lcm, and the constants pi, e, tau. Angles are in radians. Results over 4000
        digits are refused.
        """
        value = evaluate(expression)
        return Calculation(expression=expression, result=value, text=format_number(value))

    @server.tool(annotations=READ_ONLY)
    def convert_units(
        value: Annotated[float, Field(description="the amount to convert, e.g. 100")],
        from_unit: Annotated[str, Field(description="unit of value, e.g. 'km', 'lb', 'C', 'MiB', 'mph', 'ft2'")],
        to_unit: Annotated[str, Field(description="unit to convert to; must measure the same quantity as from_unit")],
    ) -> Conversion:
        """Convert an amount between units of the same quantity.

        Quantities: length (m km cm mm um nm in ft yd mi nmi), mass (kg g mg ug t lb oz st), time
        (s ms us ns min h d wk month yr), volume (m3 L dL cL mL cm3 in3 ft3 gal qt pt cup fl_oz tbsp
        tsp imp_gal; gallons are US unless imp_gal), speed (m/s km/h mph kn ft/s), area (m2 km2 cm2
        mm2 ha acre in2 ft2 yd2 mi2), data (bit kbit Mbit Gbit B kB MB GB TB PB KiB MiB GiB TiB PiB;
        kB = 1000 bytes, KiB = 1024 bytes) and temperature (C F K). Full names such as 'miles' work too.
        """
        result, quantity, source, target = convert(value, from_unit, to_unit)
        return Conversion(value=value, from_unit=source, to_unit=target, quantity=quantity, result=result,
                          text=f"{format_number(value)} {source} = {format_number(result)} {target}")

    @server.tool(annotations=READ_ONLY)
    def list_units() -> dict[str, list[str]]:
        """List the unit symbols convert_units knows, grouped by quantity."""
        return known_units()

    return server


# ----------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The calc server has no options."""


def build(args: argparse.Namespace) -> FastMCP:
    return build_server()
