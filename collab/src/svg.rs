//! Whiteboard export: the scene as SVG (drawn by the server from its canonical state) and
//! as PNG (that SVG rasterised with resvg). Colours were validated on the way in and text
//! is escaped here, so a scene cannot inject markup.

use std::collections::HashMap;
use std::fmt::Write;

use crate::whiteboard::{Element, ElementKind, WhiteboardState};

const MARGIN: f64 = 20.0;
/// Largest PNG side, in pixels (a 4096² canvas is 64 MiB).
const MAX_PNG_SIDE: f64 = 4096.0;

/// The system's fonts, loaded once.
fn fonts() -> std::sync::Arc<resvg::usvg::fontdb::Database> {
    static FONTS: std::sync::OnceLock<std::sync::Arc<resvg::usvg::fontdb::Database>> =
        std::sync::OnceLock::new();
    FONTS
        .get_or_init(|| {
            let mut db = resvg::usvg::fontdb::Database::new();
            db.load_system_fonts();
            std::sync::Arc::new(db)
        })
        .clone()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

fn bounds(elements: &[&Element]) -> (f64, f64, f64, f64) {
    let mut min = (f64::MAX, f64::MAX);
    let mut max = (f64::MIN, f64::MIN);
    let mut grow = |x: f64, y: f64| {
        min = (min.0.min(x), min.1.min(y));
        max = (max.0.max(x), max.1.max(y));
    };
    for e in elements {
        grow(e.x, e.y);
        grow(e.x + e.width, e.y + e.height);
        for p in &e.points {
            grow(e.x + p[0], e.y + p[1]);
        }
    }
    if min.0 > max.0 {
        return (0.0, 0.0, 100.0, 100.0);
    }
    (
        min.0 - MARGIN,
        min.1 - MARGIN,
        (max.0 - min.0 + 2.0 * MARGIN).max(1.0),
        (max.1 - min.1 + 2.0 * MARGIN).max(1.0),
    )
}

fn points(e: &Element) -> String {
    e.points
        .iter()
        .map(|p| format!("{:.1},{:.1}", e.x + p[0], e.y + p[1]))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Image contents by file id: (mime type, bytes).
pub type Images = HashMap<String, (String, Vec<u8>)>;

pub fn render_svg(scene: &WhiteboardState, images: &Images) -> String {
    let visible: Vec<&Element> = scene
        .ordered()
        .into_iter()
        .filter(|e| !e.is_deleted)
        .collect();
    let (x, y, w, h) = bounds(&visible);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="{x:.1} {y:.1} {w:.1} {h:.1}" width="{w:.0}" height="{h:.0}">"#
    );
    svg.push_str(r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="context-stroke"/></marker></defs>"##);
    let _ = write!(
        svg,
        r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="white"/>"#
    );
    for e in visible {
        let stroke = format!(
            r#"stroke="{}" stroke-width="{:.1}""#,
            e.stroke, e.stroke_width
        );
        let style = format!(r#"{stroke} fill="{}""#, e.fill);
        let (cx, cy) = (e.x + e.width / 2.0, e.y + e.height / 2.0);
        let rotate = if e.angle != 0.0 {
            format!(
                r#" transform="rotate({:.2} {cx:.1} {cy:.1})""#,
                e.angle.to_degrees()
            )
        } else {
            String::new()
        };
        match e.kind {
            ElementKind::Rectangle => {
                let _ = write!(
                    svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" {style}{rotate}/>"#,
                    e.x, e.y, e.width, e.height
                );
            }
            ElementKind::Ellipse => {
                let _ = write!(
                    svg,
                    r#"<ellipse cx="{cx:.1}" cy="{cy:.1}" rx="{:.1}" ry="{:.1}" {style}{rotate}/>"#,
                    e.width.abs() / 2.0,
                    e.height.abs() / 2.0
                );
            }
            ElementKind::Diamond => {
                let _ = write!(
                    svg,
                    r#"<polygon points="{cx:.1},{:.1} {:.1},{cy:.1} {cx:.1},{:.1} {:.1},{cy:.1}" {style}{rotate}/>"#,
                    e.y,
                    e.x + e.width,
                    e.y + e.height,
                    e.x
                );
            }
            ElementKind::Line | ElementKind::Freedraw => {
                let _ = write!(
                    svg,
                    r#"<polyline points="{}" {stroke} fill="none" stroke-linecap="round" stroke-linejoin="round"{rotate}/>"#,
                    points(e)
                );
            }
            ElementKind::Arrow => {
                let _ = write!(
                    svg,
                    r#"<polyline points="{}" {stroke} fill="none" marker-end="url(#arrow)"{rotate}/>"#,
                    points(e)
                );
            }
            ElementKind::Text | ElementKind::Sticky => {
                if e.kind == ElementKind::Sticky {
                    let _ = write!(
                        svg,
                        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#fff3a0" stroke="#c9b458"{rotate}/>"##,
                        e.x, e.y, e.width, e.height
                    );
                }
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" font-family="sans-serif" font-size="16" fill="{}"{rotate}>"#,
                    e.x + 4.0,
                    e.y + 18.0,
                    if e.stroke == "transparent" {
                        "#1e1e1e"
                    } else {
                        &e.stroke
                    }
                );
                for (i, line) in e.text.lines().enumerate() {
                    let _ = write!(
                        svg,
                        r#"<tspan x="{:.1}" dy="{}">{}</tspan>"#,
                        e.x + 4.0,
                        if i == 0 { "0" } else { "1.2em" },
                        escape(line)
                    );
                }
                svg.push_str("</text>");
            }
            ElementKind::Image => {
                let image = e.file_id.as_ref().and_then(|id| images.get(id));
                match image {
                    Some((mime, bytes)) => {
                        let data = base64_encode(bytes);
                        let _ = write!(
                            svg,
                            r#"<image x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" href="data:{};base64,{data}"{rotate}/>"#,
                            e.x,
                            e.y,
                            e.width,
                            e.height,
                            escape(mime)
                        );
                    }
                    None => {
                        let _ = write!(
                            svg,
                            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#eeeeee" stroke="#999999"{rotate}/>"##,
                            e.x, e.y, e.width, e.height
                        );
                    }
                }
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Standard base64 (for data URLs).
fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Debug, thiserror::Error)]
#[error("PNG rendering failed: {0}")]
pub struct RenderError(String);

/// Rasterises an SVG made by [`render_svg`] (scaled down if a side would exceed 4096 px).
pub fn render_png(svg: &str) -> Result<Vec<u8>, RenderError> {
    let options = resvg::usvg::Options {
        fontdb: fonts(),
        ..resvg::usvg::Options::default()
    };
    let tree =
        resvg::usvg::Tree::from_str(svg, &options).map_err(|e| RenderError(e.to_string()))?;
    let size = tree.size();
    let scale = (MAX_PNG_SIDE / f64::from(size.width().max(size.height()))).min(1.0) as f32;
    let width = ((size.width() * scale).ceil() as u32).max(1);
    let height = ((size.height() * scale).ceil() as u32).max(1);
    let mut pixmap = resvg::tiny_skia::Pixmap::new(width, height)
        .ok_or_else(|| RenderError("image too large".into()))?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| RenderError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Access, Actor, Ctx, Stored};
    use serde_json::json;

    #[test]
    fn a_scene_renders_to_svg_and_png() {
        let ann = Actor {
            room: "r".into(),
            identity: "ann".into(),
            name: "Ann".into(),
            moderator: false,
            access: Access::full(),
        };
        let mut scene = WhiteboardState::default();
        let body = scene.decide(Ctx { actor: &ann, now_ms: 0, seq: 1 }, json!({"op":"upsert","elements":[
            {"id":"r","type":"rectangle","version":1,"version_nonce":1,"x":0,"y":0,"width":100,"height":50,"fill":"#ff0000"},
            {"id":"t","type":"sticky","version":1,"version_nonce":1,"x":120,"y":0,"width":100,"height":80,"text":"<script>alert(1)</script>"},
            {"id":"a","type":"arrow","version":1,"version_nonce":1,"x":0,"y":100,"points":[[0,0],[200,40]]},
            {"id":"gone","type":"ellipse","version":1,"version_nonce":1,"is_deleted":true,"x":5000,"y":5000,"width":10,"height":10}
        ]})).unwrap();
        scene.apply(Stored {
            seq: 1,
            at: 0,
            author: &ann.author(),
            body: &body,
        });
        let svg = render_svg(&scene, &Images::new());
        assert!(svg.contains(r##"fill="#ff0000""##));
        assert!(svg.contains("&lt;script&gt;"), "text is escaped");
        assert!(!svg.contains("<script>"));
        assert!(!svg.contains("ellipse"), "tombstones are not drawn");
        let png = render_png(&svg).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
