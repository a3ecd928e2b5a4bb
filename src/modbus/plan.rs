//! Coalescing: the points of a set of sensors become as few read requests as possible.
//!
//! Points on the same connection, unit and table whose registers touch or overlap are read by
//! one request, as long as it spans at most the smaller `max_span` of the points in it (and the
//! protocol's limit). Registers between two points are never read to join them: a device may
//! answer "illegal data address" for a gap it does not map, which would fail both points.

use super::{Point, Table, Transport};

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub transport: Transport,
    pub unit: u8,
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// The most time the device has to answer: the largest timeout of its points.
    pub timeout: std::time::Duration,
    /// Each point served: (index into the input, its registers as (address, count)).
    pub parts: Vec<(usize, u16, u16)>,
}

/// The requests that read every point, in a stable order (by connection, unit, table,
/// address), each point in exactly one.
pub fn plan(points: &[Point]) -> Vec<Request> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    // The connection's name made once per point, not once per comparison.
    order.sort_by_cached_key(|&a| {
        let point = &points[a];
        (
            point.transport.to_string(),
            point.unit,
            point.table,
            point.address,
            a,
        )
    });
    let mut requests: Vec<Request> = Vec::new();
    for index in order {
        let point = &points[index];
        let end = u32::from(point.address) + u32::from(point.count());
        if let Some(last) = requests.last_mut() {
            let span_limit = point
                .max_span
                .min(last_span_limit(last, points))
                .min(point.table.protocol_max());
            let last_end = u32::from(last.start) + u32::from(last.count);
            let joined_end = last_end.max(end);
            if last.transport == point.transport
                && last.unit == point.unit
                && last.table == point.table
                && u32::from(point.address) <= last_end
                && joined_end - u32::from(last.start) <= u32::from(span_limit)
            {
                last.count = (joined_end - u32::from(last.start)) as u16;
                last.timeout = last.timeout.max(point.timeout);
                last.parts.push((index, point.address, point.count()));
                continue;
            }
        }
        requests.push(Request {
            transport: point.transport.clone(),
            unit: point.unit,
            table: point.table,
            start: point.address,
            count: point.count(),
            timeout: point.timeout,
            parts: vec![(index, point.address, point.count())],
        });
    }
    requests
}

fn last_span_limit(request: &Request, points: &[Point]) -> u16 {
    request
        .parts
        .iter()
        .map(|&(index, _, _)| points[index].max_span)
        .min()
        .unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::{ByteOrder, ValueType, DEFAULT_MAX_SPAN, DEFAULT_TIMEOUT};

    fn point(url: &str, unit: u8, table: Table, address: u16, value_type: ValueType) -> Point {
        Point {
            transport: Transport::parse(url).unwrap(),
            unit,
            table,
            address,
            value_type,
            byte_order: ByteOrder::Abcd,
            timeout: DEFAULT_TIMEOUT,
            max_span: DEFAULT_MAX_SPAN,
        }
    }

    /// The measurement: 20 registers over 3 devices. A meter with 8 f32 values in one
    /// block (16 registers), a drive with 6 u16 in two blocks, and 6 coils and inputs on a
    /// serial line's unit 3: 20 points, 5 requests.
    #[test]
    fn twenty_points_on_three_devices() {
        let meter = "tcp://192.0.2.10:502";
        let drive = "tcp://192.0.2.11:502";
        let line = "rtu:///dev/ttyUSB0?baud=19200";
        let mut points = Vec::new();
        for i in 0..8 {
            points.push(point(meter, 1, Table::Holding, 100 + 2 * i, ValueType::F32));
        }
        for address in [0, 1, 2, 10, 11, 12] {
            points.push(point(drive, 1, Table::Input, address, ValueType::U16));
        }
        for address in [0, 1, 2] {
            points.push(point(line, 3, Table::Coil, address, ValueType::U16));
        }
        for address in [5, 6, 7] {
            points.push(point(line, 3, Table::Input, address, ValueType::I16));
        }
        points.reverse(); // the config's order does not matter
        let requests = plan(&points);
        assert_eq!(points.len(), 20);
        let shapes: Vec<(String, Table, u16, u16)> = requests
            .iter()
            .map(|r| (r.transport.to_string(), r.table, r.start, r.count))
            .collect();
        let serial = "rtu:///dev/ttyUSB0?baud=19200&parity=E&data=8&stop=1";
        assert_eq!(
            shapes,
            vec![
                (serial.to_owned(), Table::Input, 5, 3),
                (serial.to_owned(), Table::Coil, 0, 3),
                (meter.to_owned(), Table::Holding, 100, 16),
                (drive.to_owned(), Table::Input, 0, 3),
                (drive.to_owned(), Table::Input, 10, 3),
            ]
        );
        let served: usize = requests.iter().map(|r| r.parts.len()).sum();
        assert_eq!(served, 20, "every point in exactly one request");
    }

    #[test]
    fn spans_overlaps_and_limits() {
        // Overlapping points (a u32 and its low word as a u16) share one request.
        let url = "tcp://127.0.0.1:502";
        let points = vec![
            point(url, 1, Table::Holding, 0, ValueType::U32),
            point(url, 1, Table::Holding, 1, ValueType::U16),
        ];
        let requests = plan(&points);
        assert_eq!(requests.len(), 1);
        assert_eq!((requests[0].start, requests[0].count), (0, 2));
        // A gap is never read to join two points.
        let points = vec![
            point(url, 1, Table::Holding, 0, ValueType::U16),
            point(url, 1, Table::Holding, 2, ValueType::U16),
        ];
        assert_eq!(plan(&points).len(), 2);
        // Different units, tables or connections never share a request.
        let points = vec![
            point(url, 1, Table::Holding, 0, ValueType::U16),
            point(url, 2, Table::Holding, 1, ValueType::U16),
            point(url, 1, Table::Input, 1, ValueType::U16),
            point("tcp://127.0.0.2:502", 1, Table::Holding, 1, ValueType::U16),
        ];
        assert_eq!(plan(&points).len(), 4);
        // max_span splits a long run: 40 contiguous registers at a span of 16 are 3 requests.
        let mut points: Vec<Point> = (0..40)
            .map(|a| point(url, 1, Table::Input, a, ValueType::U16))
            .collect();
        for p in &mut points {
            p.max_span = 16;
        }
        let counts: Vec<u16> = plan(&points).iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![16, 16, 8]);
        // The protocol's limit holds whatever max_span says: 130 registers are 2 requests.
        let mut points: Vec<Point> = (0..130)
            .map(|a| point(url, 1, Table::Input, a, ValueType::U16))
            .collect();
        for p in &mut points {
            p.max_span = 2000;
        }
        let counts: Vec<u16> = plan(&points).iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![125, 5]);
    }
}
