//! Simulcast layer selection: a pure function from what a receiver can take (bandwidth estimate,
//! tile sizes) and what publishers send (layers with measured bitrate and height) to one layer per
//! received video.

/// One simulcast layer as the SFU currently sees it arrive from the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerOption {
    /// Index into the caller's own list of layers (returned as the choice).
    pub index: usize,
    /// Measured bitrate of the layer in bits per second.
    pub bitrate_bps: u64,
    /// Frame height in pixels, when known (parsed from keyframes).
    pub height: Option<u32>,
}

/// A video a receiver shows, and the layers it could be fed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoDemand {
    /// Available layers, lowest quality first.
    pub layers: Vec<LayerOption>,
    /// Height of the tile it is shown in; `None` means "as large as possible".
    pub max_height: Option<u32>,
}

/// Share of the bandwidth estimate that may be spent on video; the rest is headroom for audio,
/// RTCP and retransmissions.
const VIDEO_SHARE: f64 = 0.85;

/// Picks one layer per demand (the `index` of the chosen [`LayerOption`], or `None` when the demand
/// has no layers).
///
/// Each video first gets the smallest layer that covers its tile; then, while the sum exceeds the
/// budget, the most expensive video steps down one layer. Every video keeps at least its lowest
/// layer: starving a tile entirely is a decision for a policy above this one (last-N).
pub fn select_layers(bandwidth_bps: u64, demands: &[VideoDemand]) -> Vec<Option<usize>> {
    // Position within each demand's `layers`.
    let mut chosen: Vec<Option<usize>> = demands.iter().map(preferred_position).collect();
    let budget = (bandwidth_bps as f64 * VIDEO_SHARE) as u64;
    let cost = |chosen: &[Option<usize>]| -> u64 {
        chosen
            .iter()
            .zip(demands)
            .filter_map(|(pos, d)| pos.map(|p| d.layers[p].bitrate_bps))
            .sum()
    };
    while cost(&chosen) > budget {
        let most_expensive = chosen
            .iter()
            .zip(demands)
            .enumerate()
            .filter_map(|(i, (pos, d))| {
                pos.filter(|p| *p > 0).map(|p| (i, d.layers[p].bitrate_bps))
            })
            .max_by_key(|(_, bps)| *bps);
        match most_expensive {
            Some((i, _)) => chosen[i] = chosen[i].map(|p| p - 1),
            None => break,
        }
    }
    chosen
        .iter()
        .zip(demands)
        .map(|(pos, d)| pos.map(|p| d.layers[p].index))
        .collect()
}

/// The smallest layer whose height covers the tile. Layers of unknown height are assumed to halve
/// from the top layer down (the browsers' simulcast ladder), with the top layer taken as 720p.
fn preferred_position(demand: &VideoDemand) -> Option<usize> {
    let top = demand.layers.len().checked_sub(1)?;
    let Some(want) = demand.max_height else {
        return Some(top);
    };
    let top_height = demand.layers[top].height.unwrap_or(720);
    let height_of = |pos: usize| {
        demand.layers[pos]
            .height
            .unwrap_or(top_height >> (top - pos).min(16))
    };
    (0..=top).find(|&pos| height_of(pos) >= want).or(Some(top))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Vec<LayerOption> {
        vec![
            LayerOption {
                index: 0,
                bitrate_bps: 150_000,
                height: Some(180),
            },
            LayerOption {
                index: 1,
                bitrate_bps: 500_000,
                height: Some(360),
            },
            LayerOption {
                index: 2,
                bitrate_bps: 1_500_000,
                height: Some(720),
            },
        ]
    }

    fn demand(max_height: Option<u32>) -> VideoDemand {
        VideoDemand {
            layers: ladder(),
            max_height,
        }
    }

    #[test]
    fn ample_bandwidth_gives_the_layer_that_covers_the_tile() {
        let choice = select_layers(
            10_000_000,
            &[demand(Some(300)), demand(None), demand(Some(100))],
        );
        assert_eq!(choice, vec![Some(1), Some(2), Some(0)]);
    }

    #[test]
    fn tight_bandwidth_steps_the_most_expensive_video_down_first() {
        // 2.4 Mbps * 0.85 = 2.04 Mbps: 1.5 + 0.5 fits, 1.5 + 1.5 does not.
        let mut choice = select_layers(2_400_000, &[demand(None), demand(None)]);
        choice.sort();
        assert_eq!(choice, vec![Some(1), Some(2)]);
    }

    #[test]
    fn starved_receiver_keeps_the_lowest_layer() {
        assert_eq!(select_layers(10_000, &[demand(None)]), vec![Some(0)]);
    }

    #[test]
    fn unknown_heights_follow_the_halving_ladder() {
        let layers = ladder()
            .into_iter()
            .map(|l| LayerOption { height: None, ..l })
            .collect();
        let d = VideoDemand {
            layers,
            max_height: Some(360),
        };
        assert_eq!(select_layers(u64::MAX / 2, &[d]), vec![Some(1)]);
    }

    #[test]
    fn a_video_without_layers_gets_none() {
        let d = VideoDemand {
            layers: vec![],
            max_height: None,
        };
        assert_eq!(select_layers(1_000_000, &[d]), vec![None]);
    }
}
