<?php
// Differential-test driver. Each stdin line is a JSON array of cases [fn, argsJson]; for each line one
// JSON array of results is written to stdout, computed by the real legacy/priceHelper.php. One process
// serves any number of lines, so a whole run costs one PHP start-up.
//
// argsJson is decoded with json_decode()'s defaults, exactly as a request body was: objects become
// stdClass, integers beyond PHP_INT_MAX become floats. JSON has no INF/NAN, so {"$php": "INF"} (at top
// level or inside an array) stands for one. Floats come back as the hex of their IEEE-754 bits.

require __DIR__ . '/../../legacy/priceHelper.php';

// Warnings ("A non-numeric value encountered") and notices don't change any result; keep stdout clean.
set_error_handler(static fn() => true);

function untag($value)
{
    if ($value instanceof stdClass) {
        $props = get_object_vars($value);
        if (count($props) === 1 && isset($props['$php'])) {
            return ['INF' => INF, '-INF' => -INF, 'NAN' => NAN][$props['$php']];
        }
        return $value;
    }
    return is_array($value) ? array_map('untag', $value) : $value;
}

function encode($value)
{
    return is_float($value) ? ['float', bin2hex(pack('E', $value))] : [gettype($value), $value];
}

function run(string $fn, array $a)
{
    try {
        switch ($fn) {
            case 'calc':
                return encode(PriceHelper::calculateAdjustedCpc($a[0], $a[1]));
            case 'validate':
                return ['list', PriceHelper::validateBidData($a[0], $a[1], $a[2])];
            case 'round':
                return encode(round($a[0], $a[1]));
            case 'is_numeric':
                return ['bool', is_numeric($a[0])];
            case 'empty':
                return ['bool', empty($a[0])];
        }
        return ['driver_error', "unknown function $fn"];
    } catch (Throwable $e) {
        return ['throw', get_class($e), $e->getMessage()];
    }
}

while (($line = fgets(STDIN)) !== false) {
    $results = [];
    foreach (json_decode($line, false, 512, JSON_THROW_ON_ERROR) as [$fn, $argsJson]) {
        $args = json_decode($argsJson);
        $results[] = is_array($args)
            ? run($fn, untag($args))
            : ['driver_error', 'arguments did not decode: ' . json_last_error_msg()];
    }
    echo json_encode($results, JSON_THROW_ON_ERROR), "\n";
    flush();
}
